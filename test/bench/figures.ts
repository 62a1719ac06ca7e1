/**
 * What every benchmark figure is: ours beside a baseline measured in the same run, as medians and a
 * ratio, with optional goals and percentiles. Shared by the bench's figure groups.
 */
export interface Figure {
  name: string;
  unit: 'ms' | 'req/s' | 'µs';
  runs: number;
  median: number;
  baselineName: string;
  baselineMedian: number;
  /** median / baselineMedian: for times, how many times the baseline's cost ours is; for req/s, the share of the baseline's rate. */
  ratio: number;
  /** What the figure should reach (new figures only), and whether the measured numbers do. */
  goal?: string;
  meetsGoal?: boolean;
  /** Percentiles of ours, where the figure is about a distribution. */
  p50?: number;
  p95?: number;
  p99?: number;
  baselineP50?: number;
  /** The smallest and largest of the per-run values whose median is reported (how much runs disagree). */
  spread?: [number, number];
  baselineSpread?: [number, number];
  /** median - baselineMedian, for latency figures whose goal is an added amount. */
  added?: number;
  /** Anything else worth reading beside the numbers (misses, errors, request counts). */
  detail?: string;
}

export async function time(fn: () => Promise<void>): Promise<number> {
  const start = performance.now();
  await fn();
  return performance.now() - start;
}

export function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = Math.floor(sorted.length / 2);
  return sorted.length % 2 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2;
}

/** Nearest-rank percentile of an ascending array. */
export function percentile(sorted: number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil(p * sorted.length) - 1))]!;
}

export function spread(values: number[]): [number, number] {
  return [Math.min(...values), Math.max(...values)];
}

export function figure(name: string, ours: number[], baselineName: string, baseline: number[], unit: Figure['unit'] = 'ms'): Figure {
  const m = median(ours);
  const b = median(baseline);
  return { name, unit, runs: ours.length, median: m, baselineName, baselineMedian: b, ratio: m / b };
}
