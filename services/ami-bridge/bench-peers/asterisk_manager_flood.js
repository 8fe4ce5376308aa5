// node asterisk-manager receiving an ami-sim flood: events/s, sequence checked.
// node asterisk_manager_flood.js HOST PORT COUNT  (ami-sim must be running)
const [host, port, count] = [process.argv[2], Number(process.argv[3]), Number(process.argv[4])];
const ami = new (require('asterisk-manager'))(port, host, 'sb', 'sbsecret', true);
let n = 0, expected = null, gaps = 0, start = null;
ami.on('newexten', (evt) => {
  const seq = Number(evt.simseq);
  if (start === null) { start = process.hrtime.bigint(); expected = seq; }
  if (seq !== expected) gaps++;
  expected = seq + 1;
  if (++n >= count) {
    const secs = Number(process.hrtime.bigint() - start) / 1e9;
    console.log(`| node asterisk-manager | ${count} | ${n} | ${gaps} | ${secs.toFixed(2)} | ${(n / secs).toFixed(0)} |`);
    process.exit(0);
  }
});
setTimeout(() => ami.action({ action: 'SimFlood', rate: '0', count: String(count) }), 500);
