// Evaluates a PAC file with the npm `pac-resolver` package (QuickJS sandbox, the same engine
// family as proxy-agent uses) and prints one FindProxyForURL answer per URL, one per line.
// Usage: node eval.js <file.pac> <url>...
// Exit 3: pac-resolver is not installed (`npm install -g pac-resolver@7 @tootallnate/quickjs-emscripten@0.23`).
'use strict';
const fs = require('fs');

async function main() {
  let pac, quickjs;
  try {
    // Plain require honours NODE_PATH. pac-resolver 7 takes the QuickJS engine as an argument
    // and lists it only as a dev dependency, so it is installed next to it.
    pac = require('pac-resolver');
    quickjs = require('@tootallnate/quickjs-emscripten');
  } catch (e) {
    console.error('pac-resolver not found: ' + e.message);
    process.exit(3);
  }
  const [file, ...urls] = process.argv.slice(2);
  const qjs = await quickjs.getQuickJS();
  const find = pac.createPacResolver(qjs, fs.readFileSync(file, 'utf8'));
  for (const url of urls) {
    console.log(await find(url));
  }
}

main().catch((e) => {
  console.error(e && e.stack ? e.stack : String(e));
  process.exit(1);
});
