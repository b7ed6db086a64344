// The per-operation IO metrics the native side keeps (native/common/io_metrics.h) as
// NativeVhostBlk.stats(true) and NativeServer.stats(true) return them: counted by the IO
// threads, copied out only when /metrics is scraped (src/metrics/).

export const IO_OPS = ['read', 'write', 'flush', 'discard', 'write_zeroes', 'other'] as const;
export type IoOp = (typeof IO_OPS)[number];

export const IO_ERROR_KINDS = ['io', 'invalid', 'unsupported', 'transport'] as const;
export type IoErrorKind = (typeof IO_ERROR_KINDS)[number];

export interface IoOpMetrics {
  /** answered, any result */
  requests: number;
  /** data (read/write) or range (discard/write_zeroes) bytes of the successful requests */
  bytes: number;
  errors: Record<IoErrorKind, number>;
  latencySumSeconds: number;
  /** per bucket, not cumulative; one more than latencyBoundsSeconds (the overflow) */
  latencyBuckets: number[];
}

export type IoMetrics = Record<IoOp, IoOpMetrics> & { latencyBoundsSeconds: number[] };
