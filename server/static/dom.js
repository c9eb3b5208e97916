// The two DOM helpers every panel uses.

export const $ = (id) => document.getElementById(id);

export function setStatus(el, text, isError = false) {
  el.textContent = text;
  el.classList.toggle("error", isError);
}

// A cell appended to a table row, with an optional tooltip and background.
export function tableCell(tr, text, title = "", background = "") {
  const td = tr.insertCell();
  td.textContent = text;
  if (title) td.title = title;
  if (background) td.style.background = background;
  return td;
}
