// Form pieces the create and edit views share.
import { clear, el } from "./dom.js";

// Checkboxes for the configured scope names, inside a fieldset's .scope-list.
export function fillScopes(fieldset, names, idPrefix, checked = null) {
  const list = fieldset.querySelector(".scope-list");
  clear(list);
  names.forEach((name, index) => {
    const id = `${idPrefix}-scope-${index}`;
    const box = el("input", { type: "checkbox", id, value: name });
    box.checked = Array.isArray(checked) && checked.includes(name);
    list.append(el("div", { class: "check" }, box, el("label", { for: id }, name)));
  });
  fieldset.hidden = names.length === 0;
}

// The ticked scope names, or null (unrestricted) when none is ticked.
export function chosenScopes(fieldset) {
  const names = [...fieldset.querySelectorAll("input[type=checkbox]:checked")].map((box) => box.value);
  return names.length ? names : null;
}

export function fillOptions(select, options, selected) {
  clear(select);
  for (const [value, label] of options) {
    const option = el("option", { value }, label);
    option.selected = String(value) === String(selected);
    select.append(option);
  }
}

const DAY = 86400;

export function expiryOptions(maxDays) {
  const choices = [[7, "In 7 days"], [30, "In 30 days"], [90, "In 90 days"], [365, "In 1 year"]];
  return [["", "Never"], ...choices.filter(([days]) => days <= maxDays)];
}

export function expiresAt(days) {
  return days ? new Date(Date.now() + Number(days) * DAY * 1000).toISOString() : null;
}

export function graceOptions(maxSeconds) {
  const choices = [
    [0, "None: the old key stops now"],
    [3600, "1 hour"],
    [DAY, "1 day"],
    [7 * DAY, "7 days"],
  ];
  return choices.filter(([seconds]) => seconds <= maxSeconds);
}
