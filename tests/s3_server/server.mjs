// A real S3-compatible server (the `s3rver` package) for the test suite, on plain http on loopback.
//
// Usage: node server.mjs DIRECTORY BUCKET...
// Prints one line, `READY http://127.0.0.1:<port>`, on stdout once listening with the buckets
// created; exits when its stdin closes, so a test run that dies does not leave it behind.
import S3rver from 's3rver';

const [directory, ...buckets] = process.argv.slice(2);
if (!directory) {
  console.error('usage: node server.mjs DIRECTORY BUCKET...');
  process.exit(2);
}

const server = new S3rver({
  address: '127.0.0.1',
  // port 0: the kernel picks a free port and the READY line reports it, so no race over a port
  port: 0,
  directory,
  silent: true,
  configureBuckets: buckets.map((name) => ({ name })),
});

const { address, port } = await server.run();
process.stdout.write(`READY http://${address}:${port}\n`);

process.stdin.on('end', () => process.exit(0));
process.stdin.resume();
