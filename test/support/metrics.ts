/**
 * Reading a mount's metrics endpoint in tests: scrape, parse Prometheus'
 * text format (every line must be a comment or a sample), look samples up.
 */
import assert from 'node:assert/strict';
import http from 'node:http';

/** Samples by name and labels: `name{a="x",b="y"}` with the labels sorted. */
export type Samples = Map<string, number>;

export function sampleKey(name: string, labels: Record<string, string> = {}): string {
  const pairs = Object.entries(labels).sort(([a], [b]) => a.localeCompare(b)).map(([k, v]) => `${k}="${v}"`);
  return pairs.length === 0 ? name : `${name}{${pairs.join(',')}}`;
}

/** Parses the text format; every line must be a comment or a sample. */
export function parseExposition(text: string): Samples {
  const samples: Samples = new Map();
  for (const line of text.split('\n')) {
    if (line === '' || line.startsWith('# HELP ') || line.startsWith('# TYPE ')) continue;
    const match = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$/.exec(line);
    assert.ok(match, `not a sample line: ${line}`);
    const labels: Record<string, string> = {};
    for (const pair of match[2] ? match[2].match(/[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\]|\\.)*"/g) ?? [] : []) {
      const at = pair.indexOf('=');
      labels[pair.slice(0, at)] = pair.slice(at + 2, -1);
    }
    const value = Number(match[3]);
    // prom-client writes NaN (an event-loop figure before any sample) as "Nan"; Prometheus reads it case-blind.
    assert.ok(!Number.isNaN(value) || /^nan$/i.test(match[3]!), `not a number in: ${line}`);
    samples.set(sampleKey(match[1]!, labels), value);
  }
  return samples;
}

export function httpGet(port: number, urlPath: string): Promise<{ status: number; contentType: string; body: string }> {
  return new Promise((resolve, reject) => {
    http.get({ host: '127.0.0.1', port, path: urlPath }, (response) => {
      let body = '';
      response.setEncoding('utf8');
      response.on('data', (chunk: string) => { body += chunk; });
      response.on('end', () => resolve({ status: response.statusCode ?? 0, contentType: String(response.headers['content-type']), body }));
    }).on('error', reject);
  });
}

export async function scrape(port: number): Promise<Samples> {
  const response = await httpGet(port, '/metrics');
  assert.equal(response.status, 200);
  assert.match(response.contentType, /^text\/plain; version=0\.0\.4/);
  return parseExposition(response.body);
}

export function value(samples: Samples, name: string, labels: Record<string, string> = {}): number {
  const v = samples.get(sampleKey(name, labels));
  assert.ok(v !== undefined, `no sample ${sampleKey(name, labels)}`);
  return v;
}
