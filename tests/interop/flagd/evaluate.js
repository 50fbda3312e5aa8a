// Evaluates a flagd flag file with flagd's own evaluator (@openfeature/flagd-core, the
// core of the OpenFeature in-process providers), independently of guardrail's code.
//
//   node evaluate.js FLAGS.json < cases.json
//
// The file is loaded with strict validation against flagd's flags.json and targeting
// schemas (an invalid file fails). Each case is
//   {"flag": KEY, "type": "boolean"|"string", "context": {...}, "keys": N, "prefix": P}
// and evaluates targeting keys P0 .. P(N-1) with that context. Prints, per case, the
// count of each variant and of each reason: [{"variants": {...}, "reasons": {...}}];
// with "list": VARIANT in a case, also "listed": the indices of the keys served it.
'use strict';

const fs = require('fs');
const { FlagdCore, MemoryStorage } = require('@openfeature/flagd-core');

const quiet = { error: () => {}, warn: () => {}, info: () => {}, debug: () => {} };

function main() {
  const file = process.argv[2];
  if (!file) {
    throw new Error('usage: node evaluate.js FLAGS.json < cases.json');
  }
  const storage = new MemoryStorage(quiet);
  storage.setConfigurations(fs.readFileSync(file, 'utf8'), true);
  const core = new FlagdCore(storage, quiet);
  const cases = JSON.parse(fs.readFileSync(0, 'utf8'));
  const out = cases.map((c) => {
    const variants = {};
    const reasons = {};
    const listed = [];
    for (let i = 0; i < c.keys; i++) {
      const ctx = Object.assign({ targetingKey: `${c.prefix}${i}` }, c.context);
      const r =
        c.type === 'string'
          ? core.resolveStringEvaluation(c.flag, '', ctx, quiet)
          : core.resolveBooleanEvaluation(c.flag, false, ctx, quiet);
      const v = r.variant === undefined ? '<none>' : String(r.variant);
      variants[v] = (variants[v] || 0) + 1;
      reasons[r.reason] = (reasons[r.reason] || 0) + 1;
      if (c.list !== undefined && v === c.list) {
        listed.push(i);
      }
    }
    return { variants, reasons, listed };
  });
  process.stdout.write(JSON.stringify(out));
}

main();
