// node-http.js: Node.js's own http module through the redirect (lab/conformance/apps.py), run by
// bench/peer.sh: a server and a keep-alive client, as Node services talk to each other.
//
//   node node-http.js server PORT BYTES       serve GET /body (BYTES random bytes) and GET /sha
//   node node-http.js client PORT REQUESTS    fetch /sha, then /body REQUESTS times over one
//                                              keep-alive connection; print one JSON object
'use strict';
const http = require('http');
const crypto = require('crypto');

const [command, port, count] = process.argv.slice(2);
const digest = (data) => crypto.createHash('sha256').update(data).digest('hex');

function server(port, size) {
  const body = crypto.randomBytes(size);
  const sha = digest(body);
  http.createServer((req, res) => {
    res.end(req.url === '/sha' ? sha : body);
  }).listen(port, '127.0.0.1');
}

function get(agent, path) {
  return new Promise((resolve, reject) => {
    const req = http.get({ host: '127.0.0.1', port: Number(port), path, agent }, (res) => {
      const chunks = [];
      res.on('data', (chunk) => chunks.push(chunk));
      res.on('end', () => resolve({ status: res.statusCode, body: Buffer.concat(chunks), reused: req.reusedSocket }));
      res.on('error', reject);
    });
    req.on('error', reject);
  });
}

async function client(requests) {
  const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
  const result = { statuses: [], intact: [], bytes: 0, connections: 0 };
  try {
    const sha = await get(agent, '/sha');
    result.connections += sha.reused ? 0 : 1;
    for (let i = 0; i < requests; i++) {
      const got = await get(agent, '/body');
      result.connections += got.reused ? 0 : 1;
      result.statuses.push(got.status);
      result.intact.push(digest(got.body) === sha.body.toString());
      result.bytes += got.body.length;
    }
  } catch (err) {
    result.error = String(err);
  }
  agent.destroy();
  console.log(JSON.stringify(result));
}

if (command === 'server') server(Number(port), Number(count));
else if (command === 'client') client(Number(count));
else { console.error('usage: node node-http.js server PORT BYTES | client PORT REQUESTS'); process.exit(2); }
