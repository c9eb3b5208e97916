// One block of the model as a row of boxes, from the residual stream x to the logit lens, each with a one-line
// explanation (on hover, and in the line under the diagram). The part of the walkthrough under the pointer lights
// its box: every element of the walkthrough carries data-stage, one of the STAGES' names.
import { $ } from "./dom.js";

export const STAGES = [
  ["x", "x", "the residual stream: the running sum every block reads from and adds its output to, one vector of " +
    "d_model numbers per byte (it starts as the byte's embedding)"],
  ["norm", "RMSNorm", "divides x by its root mean square (and scales each number by a learned weight): h = norm(x)"],
  ["h", "h", "the block's normalised input at each byte: what W_Q, W_K and W_V read"],
  ["project", "W_Q · W_K · W_V", "three learned matrices: q = h·W_Q, k = h·W_K, v = h·W_V, each d_k numbers per head"],
  ["rope", "RoPE", "rotary position embedding: turns pairs of q's and k's numbers by an angle that grows with the " +
    "byte's position, so q·k depends on how far apart two bytes are"],
  ["keys", "k", "every byte's key after RoPE: what the query is compared with"],
  ["scores", "q·k", "the dot product of the query with each key: Σ_i q_i·k_i (the sum of the q∘k strip)"],
  ["scale", "÷ √d_k", "divide by the square root of d_k, the size of q and k (the head's dimension), so scores do " +
    "not grow with d_k"],
  ["mask", "mask", "causal: a byte may not look at later bytes; their scores become −∞ (weight 0)"],
  ["softmax", "softmax", "weight_j = exp(s_j) ÷ Σ exp(s): positive, summing to 1 (computed as exp(s − max) to stay " +
    "finite; the ratio is the same)"],
  ["values", "v", "every byte's value: what the head copies from it"],
  ["mix", "Σ w·v", "z = Σ_j weight_j · v_j: the head's output, a weighted mix of the values"],
  ["write", "W_O", "the output matrix: z·W_O (this head's columns) is what the head adds to the residual stream"],
  ["residual", "+ x", "the residual connection: the heads' writes are added to x"],
  ["mlp", "norm · MLP · + x", "a second RMSNorm, a two-layer network applied to each byte alone, added to x again"],
  ["blocks", "… next blocks", "the same again, layer after layer"],
  ["lens", "norm · W_U → lens", "the final norm and the unembedding turn the stream into 256 logits, one per byte " +
    "value; the logit lens applies them after any layer. bits/byte: −log₂ p(the byte that came), averaged"],
];

export class BlockDiagram {
  constructor() {
    const box = $("block-diagram");
    box.textContent = "";
    for (const [stage, name, text] of STAGES) {
      if (box.children.length) box.appendChild(Object.assign(document.createElement("span"), { className: "arrow", textContent: "→" }));
      const el = document.createElement("span");
      el.className = "stage";
      el.dataset.stage = stage;
      el.textContent = name;
      el.title = text;
      el.tabIndex = 0;
      box.appendChild(el);
    }
    box.addEventListener("mouseover", (e) => {
      const el = e.target.closest(".stage");
      if (el) this.light(el.dataset.stage);
    });
    box.addEventListener("focusin", (e) => this.light(e.target.dataset.stage));
    this.light("softmax");
  }

  // Light one stage and say what it is.
  light(stage) {
    const found = STAGES.find(([s]) => s === stage);
    if (!found) return;
    for (const el of $("block-diagram").querySelectorAll(".stage")) el.classList.toggle("lit", el.dataset.stage === stage);
    $("diagram-note").textContent = `${found[1]}: ${found[2]}`;
    $("diagram-note").dataset.stage = stage;
  }

  // The walkthrough lights the stage of the element under the pointer.
  follow(container) {
    container.addEventListener("mouseover", (e) => {
      const el = e.target.closest("[data-stage]");
      if (el) this.light(el.dataset.stage);
    });
  }
}
