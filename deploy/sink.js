'use strict';
// A small webhook sink for `make run`: answers 200 to every request and
// appends it as one JSON line {ts, method, url, headers, body} to --out.
//   node deploy/sink.js --port 8090 --out var/sink/events.jsonl
const fs = require('node:fs');
const http = require('node:http');

const args = process.argv.slice(2);
const opt = (name, def) => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 ? args[i + 1] : def;
};
const port = parseInt(opt('port', '8090'), 10);
const out = fs.createWriteStream(opt('out', 'events.jsonl'), { flags: 'a' });

const server = http.createServer((req, res) => {
  const chunks = [];
  req.on('data', (c) => chunks.push(c));
  req.on('end', () => {
    const text = Buffer.concat(chunks).toString('utf8');
    let body = text;
    try { body = JSON.parse(text); } catch (e) { /* keep the raw text */ }
    out.write(JSON.stringify({ ts: new Date().toISOString(), method: req.method, url: req.url, headers: req.headers, body }) + '\n');
    res.writeHead(200, { 'Content-Type': 'text/plain' });
    res.end('ok');
  });
});
server.keepAliveTimeout = 65000;
server.listen(port, '127.0.0.1', () => process.stderr.write(`ts=${new Date().toISOString()} level=info svc=sink event=ready port=${port}\n`));
const stop = () => server.close(() => out.end(() => process.exit(0)));
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
