// `bench --rdma` reads perftest's latency table by column name: lines as ib_write_lat (perftest
// in rdma-core 44's Debian build) printed them in the soft-RoCE guest, tabs included.
import test from 'ava';
import { parsePerftest } from '../../bench/rdma.js';

const RULE = '-'.repeat(87);
const HEADER = ' #bytes #iterations    t_min[usec]    t_max[usec]  t_typical[usec]    t_avg[usec]    t_stdev[usec]   99% percentile[usec]   99.9% percentile[usec] ';

test('perftest latency table: typical, average and the 99th percentile by column name', (t) => {
  const text = ` local address: LID 0000 QPN 0x0013 PSN 0x1fcf16\n${RULE}\n${HEADER}\n 4096    1000          59.55          3552.05      61.03    \t       81.82       \t200.52 \t\t278.15  \t\t3552.05\n${RULE}\n`;
  t.deepEqual(parsePerftest(text), { bytes: 4096, iterations: 1000, t_min: 59.55, t_max: 3552.05, t_typical: 61.03, t_avg: 81.82, p99: 278.15 });
});

test('perftest output without a result line (client rejected, crashed) gives nothing', (t) => {
  t.is(parsePerftest('RDMA CM event error:\nEvent: RDMA_CM_EVENT_REJECTED; error: 8.\nSegmentation fault\n'), undefined);
  t.is(parsePerftest(`${RULE}\n${HEADER}\n${RULE}\n`), undefined, 'a header with no numbers under it');
});
