// A long list drawn a page at a time: the first page at once, the next
// ones as the end of what is drawn scrolls near the view, so a pool on
// 10,000 workers paints as fast as one on ten.  Below the list, a line
// says how many are drawn and how many there are.

import { fill, h } from "./dom.js";

const NEAR = "1200px"; // how close to the view the end may come before more is drawn

export class LazyList {
  // `container` holds the drawn elements; render(item) gives an item's.
  // With `root`, the list scrolls in that element rather than in the page.
  constructor(container, render, { page = 100, noun = "items", root = null } = {}) {
    this.container = container;
    this.render = render;
    this.page = page;
    this.noun = noun;
    this.items = [];
    this.drawn = 0;
    this.more = h("p", { class: "muted more", role: "status" });
    this.observer = new IntersectionObserver((entries) => {
      if (entries.some((entry) => entry.isIntersecting)) this.next();
    }, { root, rootMargin: NEAR });
    this.observer.observe(this.more);
  }

  // Show `items` instead: as many as were drawn before (a page at least).
  show(items) {
    this.items = items;
    const count = Math.min(items.length, Math.max(this.page, this.drawn));
    this.drawn = 0;
    this.container.replaceChildren();
    this.draw(count);
  }

  next() {
    if (this.drawn < this.items.length) this.draw(this.page);
  }

  draw(count) {
    const end = Math.min(this.items.length, this.drawn + count);
    this.container.append(...this.items.slice(this.drawn, end).map(this.render));
    this.drawn = end;
    const left = this.items.length - this.drawn;
    this.more.hidden = left === 0;
    fill(this.more, left ? `${this.drawn} of ${this.items.length} ${this.noun} shown; more as you scroll` : "");
    // Look again: if the end is still in sight, the observer calls back once more.
    this.observer.unobserve(this.more);
    if (left) this.observer.observe(this.more);
  }

  stop() {
    this.observer.disconnect();
  }
}
