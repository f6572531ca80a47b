// The definition editor's TOML (issue 17: a definition as written in the definitions file):
// smol-toml, vendored unmodified (api/static/vendor/README.md), parses and writes it.
// A module script, so it is exposed to the classic scripts as window.TOML.
import { parse, stringify } from "/static/vendor/smol-toml/index.js";

window.TOML = { parse, stringify };
