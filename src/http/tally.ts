
/**
 * Counters and histograms kept in plain nested Maps on the hot path, turned
 * into Prometheus samples only when /metrics is scraped. prom-client's own
 * metrics hash their label object on every increment, which cost a tenth of
 * the daemon's time per event in the dispatch benchmark.
 */

type Labels = Record<string, string>;

interface Sample {
  readonly labels: Labels;
  readonly value: number;
  readonly metricName?: string;
}

/** What prom-client's registerMetric takes: Metrics registers these once its registry is made. */
export interface CustomMetric {
  readonly name: string;
  readonly help: string;
  readonly type: 'counter' | 'histogram';
  readonly aggregator: 'sum';
  get(): { name: string; help: string; type: string; aggregator: 'sum'; values: Sample[] };
  reset(): void;
}

/** Leaf of a tally: the label values and the running figures. */
export interface Cell {
  readonly labels: Labels;
  value: number;
  sum: number;
  readonly buckets: Float64Array | undefined;
}

abstract class Tally implements CustomMetric {
  readonly name: string;
  readonly help: string;
  abstract readonly type: 'counter' | 'histogram';
  readonly aggregator = 'sum' as const;
  protected readonly labelNames: readonly string[];
  protected readonly cells: Cell[] = [];
  readonly #root = new Map<string, unknown>();

  constructor(options: { name: string; help: string; labelNames: readonly string[]; registry: CustomMetric[] }) {
    this.name = options.name;
    this.help = options.help;
    this.labelNames = options.labelNames;
    options.registry.push(this);
  }

  protected abstract newCell(labels: Labels): Cell;

  /** The cell for these label values (as many as labelNames), created on first use; no allocation once it exists. */
  cell(a: string, b?: string, c?: string): Cell {
    const depth = this.labelNames.length;
    let node = this.#root;
    if (depth > 1) node = this.#child(node, a);
    if (depth > 2) node = this.#child(node, b ?? '');
    const last = depth === 1 ? a : depth === 2 ? (b ?? '') : (c ?? '');
    let cell = node.get(last) as Cell | undefined;
    if (!cell) {
      const values = [a, b ?? '', c ?? ''];
      const labels: Labels = {};
      this.labelNames.forEach((n, i) => (labels[n] = values[i] ?? ''));
      cell = this.newCell(labels);
      node.set(last, cell);
      this.cells.push(cell);
    }
    return cell;
  }

  #child(node: Map<string, unknown>, key: string): Map<string, unknown> {
    let next = node.get(key) as Map<string, unknown> | undefined;
    if (!next) {
      next = new Map();
      node.set(key, next);
    }
    return next;
  }

  abstract get(): { name: string; help: string; type: string; aggregator: 'sum'; values: Sample[] };

  /**
   * Zeroes every cell in place (prom-client's registry.resetMetrics()): cells
   * looked up before (Metrics.handler keeps a run's cells) stay the counted ones.
   */
  reset(): void {
    for (const c of this.cells) {
      c.value = 0;
      c.sum = 0;
      c.buckets?.fill(0);
    }
  }
}

export class TallyCounter extends Tally {
  readonly type = 'counter' as const;

  constructor(options: { name: string; help: string; labelNames: readonly string[]; registry: CustomMetric[] }) {
    super(options);
    // A counter without labels reads 0 from the start rather than being absent.
    if (this.labelNames.length === 0) this.cell('');
  }

  protected newCell(labels: Labels): Cell {
    return { labels, value: 0, sum: 0, buckets: undefined };
  }

  inc(a: string, b?: string, c?: string, by = 1): void {
    this.cell(a, b, c).value += by;
  }

  get() {
    return { name: this.name, help: this.help, type: this.type, aggregator: this.aggregator, values: this.cells.map((c) => ({ labels: c.labels, value: c.value })) };
  }
}

export class TallyHistogram extends Tally {
  readonly type = 'histogram' as const;
  readonly #bounds: readonly number[];

  constructor(options: { name: string; help: string; labelNames: readonly string[]; buckets: readonly number[]; registry: CustomMetric[] }) {
    super(options);
    this.#bounds = [...options.buckets].sort((x, y) => x - y);
  }

  protected newCell(labels: Labels): Cell {
    return { labels, value: 0, sum: 0, buckets: new Float64Array(this.#bounds.length) };
  }

  observe(value: number, a: string, b?: string, c?: string): void {
    this.observeIn(this.cell(a, b, c), value);
  }

  /** observe() into a cell looked up before (cell()). */
  observeIn(cell: Cell, value: number): void {
    cell.value++;
    cell.sum += value;
    const bounds = this.#bounds;
    for (let i = 0; i < bounds.length; i++) {
      if (value <= bounds[i]!) {
        cell.buckets![i]!++;
        break;
      }
    }
  }

  get() {
    const values: Sample[] = [];
    for (const c of this.cells) {
      let cumulative = 0;
      this.#bounds.forEach((le, i) => {
        cumulative += c.buckets![i]!;
        values.push({ labels: { ...c.labels, le: String(le) }, value: cumulative, metricName: `${this.name}_bucket` });
      });
      values.push({ labels: { ...c.labels, le: '+Inf' }, value: c.value, metricName: `${this.name}_bucket` });
      values.push({ labels: c.labels, value: c.sum, metricName: `${this.name}_sum` });
      values.push({ labels: c.labels, value: c.value, metricName: `${this.name}_count` });
    }
    return { name: this.name, help: this.help, type: this.type, aggregator: this.aggregator, values };
  }
}

/**
 * A counter whose samples are read from counters kept elsewhere (the daemon's
 * EventCounters) when /metrics is scraped: nothing is counted twice.
 */
export class ReadCounter implements CustomMetric {
  readonly name: string;
  readonly help: string;
  readonly type = 'counter' as const;
  readonly aggregator = 'sum' as const;
  readonly #read: () => Sample[];

  constructor(options: { name: string; help: string; registry: CustomMetric[]; read: () => Sample[] }) {
    this.name = options.name;
    this.help = options.help;
    this.#read = options.read;
    options.registry.push(this);
  }

  get() {
    return { name: this.name, help: this.help, type: this.type, aggregator: this.aggregator, values: this.#read() };
  }

  reset(): void {
    // The counts belong to their owner.
  }
}
