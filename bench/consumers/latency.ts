/** Latency percentiles in ms from samples in microseconds. */
export function latencySummary(samplesUs: number[]): { n: number; p50: number; p99: number; p999: number; max: number } | null {
  if (samplesUs.length === 0) return null;
  const s = samplesUs.sort((a, b) => a - b);
  const at = (p: number): number => s[Math.min(s.length - 1, Math.max(0, Math.ceil(p * s.length) - 1))]! / 1000;
  return { n: s.length, p50: at(0.5), p99: at(0.99), p999: at(0.999), max: s.at(-1)! / 1000 };
}
