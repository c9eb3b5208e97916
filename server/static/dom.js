// The two DOM helpers every panel uses.

export const $ = (id) => document.getElementById(id);

export function setStatus(el, text, isError = false) {
  el.textContent = text;
  el.classList.toggle("error", isError);
}
