// Times graylane's decision in V8: node bench/wasm-decide/run.mjs MODULE.wasm [LABEL]
import fs from "node:fs";
import path from "node:path";

const [modulePath, label = path.basename(process.argv[2] ?? "")] = process.argv.slice(2);
const rulesDir = new URL("../rules/", import.meta.url).pathname;
const { instance } = await WebAssembly.instantiate(fs.readFileSync(modulePath), {});
const { memory, alloc, setup, run_decide, run_path, run_compile } = instance.exports;

function put(bytes) {
  const pointer = alloc(bytes.length);
  new Uint8Array(memory.buffer, pointer, bytes.length).set(bytes);
  return pointer;
}

function time(fn, iterations, reps = 7) {
  fn(Math.max(1, iterations / 5)); // warm-up: let V8 tier up
  const samples = [];
  for (let i = 0; i < reps; i++) {
    const start = process.hrtime.bigint();
    fn(iterations);
    samples.push(Number(process.hrtime.bigint() - start) / iterations);
  }
  samples.sort((a, b) => a - b);
  return { median: samples[reps >> 1], min: samples[0], max: samples[reps - 1] };
}

const fmt = (s, unit = "ns") =>
  `${s.median.toFixed(0)} ${unit} (${s.min.toFixed(0)}–${s.max.toFixed(0)})`;
const results = { module: modulePath, label, bytes: fs.statSync(modulePath).size, node: process.version };
for (const set of ["a", "b", "c"]) {
  const rules = fs.readFileSync(path.join(rulesDir, `${set}.json`));
  const requests = fs.readFileSync(path.join(rulesDir, `${set}.requests.json`));
  const bench = setup(put(rules), rules.length, put(requests), requests.length);
  if (!bench) throw new Error(`set ${set}: setup failed`);
  results[`decide/${set}`] = time((n) => run_decide(bench, n), 200000);
  results[`request_path/${set}`] = time((n) => run_path(bench, n), 200000);
}
for (const n of [1, 100, 1000]) {
  const doc = fs.readFileSync(path.join(rulesDir, `compile-${n}.json`));
  const pointer = put(doc);
  const s = time((k) => run_compile(pointer, doc.length, k), n === 1000 ? 5 : 50, 5);
  results[`compile/${n}`] = { median: s.median / 1000, min: s.min / 1000, max: s.max / 1000 };
}
for (const [key, value] of Object.entries(results)) {
  if (typeof value === "object") {
    console.log(`${label.padEnd(16)} ${key.padEnd(16)} ${fmt(value, key.startsWith("compile") ? "µs" : "ns")}`);
  }
}
fs.mkdirSync(new URL("../results/", import.meta.url).pathname, { recursive: true });
console.log(JSON.stringify(results));
