/**
 * A latch the claim loop sleeps on. poke() before wait() is remembered, so a
 * NOTIFY that lands while a claim is running still triggers the next claim; many
 * pokes collapse into one wake-up (the debounce).
 */
export class Wakeup {
  #pending = false;
  #resolve: (() => void) | undefined;

  poke(): void {
    this.#pending = true;
    this.#resolve?.();
  }

  /** Resolves on poke() or after timeoutMs; true when poked. */
  wait(timeoutMs: number): Promise<boolean> {
    if (this.#pending) {
      this.#pending = false;
      return Promise.resolve(true);
    }
    return new Promise((resolve) => {
      const timer = setTimeout(() => finish(false), timeoutMs);
      const finish = (poked: boolean) => {
        clearTimeout(timer);
        this.#resolve = undefined;
        this.#pending = false;
        resolve(poked);
      };
      this.#resolve = () => finish(true);
    });
  }
}
