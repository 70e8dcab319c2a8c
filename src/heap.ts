import v8 from 'node:v8';

/**
 * hotlead keeps almost nothing between transitions (about 35 MB live), yet V8 lets the
 * old generation fill with garbage up to about four times that before it marks: a
 * 100,000-lead backlog then took the heap to 180 MB and RSS past 270 MB. Collecting at
 * 1.5x keeps the heap under ~90 MB for a few percent more GC time (BENCHMARKS.md).
 */
export const HEAP_GROWING_PERCENT = 50;

/** Sets V8's heap growing factor (0: V8's default). Entry points call it once, first. */
export function tuneHeap(percent: number = HEAP_GROWING_PERCENT): void {
  if (percent > 0) v8.setFlagsFromString(`--heap-growing-percent=${percent}`);
}
