"""Every diagnostic's code: a stable, kebab-case name per check, and its category.

A code names one check, so a CI rule, an editor's quick-fix or a search for the README's
explanation can point at it; the message says the particulars. The category groups the
codes the way ``pipec check --format json`` reported them before codes were per check:

* ``syntax``       the text is not a well-formed pipeline;
* ``semantic``     it parses but does not make sense (names, shapes, types, cycles);
* ``lint``         a warning: legal, but likely a mistake (an unused stage, say);
* ``parameter``    a ``--param`` value does not fit the pipeline;
* ``file``         the file cannot be read (missing, not UTF-8, a folder without .pipe);
* ``unsupported``  a backend lacks what the pipeline needs.

Codes are never renamed or reused: a check that goes away takes its code with it. A test
holds every reporting call of the checker to a code listed here.
"""

from __future__ import annotations

SYNTAX, SEMANTIC, LINT, PARAMETER, FILE, UNSUPPORTED = (
    "syntax", "semantic", "lint", "parameter", "file", "unsupported")
CATEGORIES = (SYNTAX, SEMANTIC, LINT, PARAMETER, FILE, UNSUPPORTED)

# code -> (category, what it means, in one line for a code-scanning page)
CODES: dict[str, tuple[str, str]] = {
    # -- syntax
    "unexpected-token": (SYNTAX, "a token the grammar does not allow here"),
    "unexpected-character": (SYNTAX, "a character that starts no token"),
    "unexpected-end": (SYNTAX, "the file ends inside a statement or block"),
    "unterminated-string": (SYNTAX, "a string literal not closed on its line"),
    "empty-file": (SYNTAX, "the file holds no pipeline"),
    "too-deep": (SYNTAX, "expressions or blocks nested beyond the limit"),
    "argument-order": (SYNTAX, "a positional argument after a keyword argument"),
    "literal-too-long": (SYNTAX, "an integer literal with too many digits"),
    # -- names and scopes
    "undefined-name": (SEMANTIC, "a name that nothing defines"),
    "duplicate-name": (SEMANTIC, "a name defined twice"),
    "duplicate-alias": (SEMANTIC, "a module alias defined twice"),
    "keyword-as-name": (SEMANTIC, "a keyword used as a name"),
    "reserved-name": (SEMANTIC, "a name pipec reserves for itself"),
    "used-before-definition": (SEMANTIC, "a name used above the statement that defines it"),
    "not-visible": (SEMANTIC, "a name defined in a block that does not enclose its use"),
    "cycle": (SEMANTIC, "a definition that depends on itself"),
    # -- Python modules, read as source
    "module-not-found": (SEMANTIC, "a `use`d module that is not on the module path"),
    "module-syntax-error": (SEMANTIC, "a `use`d module that Python cannot parse"),
    "missing-attribute": (SEMANTIC, "a module without the function or class named"),
    "unknown-method": (SEMANTIC, "an actor class without the method called"),
    "unknown-keyword": (SEMANTIC, "a keyword argument the function does not take"),
    "missing-argument": (SEMANTIC, "a call without an argument the function needs"),
    "wrong-argument-count": (SEMANTIC, "a call with too many or too few arguments"),
    "stage-function-arity": (SEMANTIC, "a stage function that cannot take the element and its bindings"),
    # -- kinds and types
    "wrong-kind": (SEMANTIC, "a name of one kind (value, collection, actor, module...) where another is needed"),
    "type-mismatch": (SEMANTIC, "a value of the wrong Python type"),
    "not-keyed": (SEMANTIC, "a keyed operation on a collection of records that are not (key, value)"),
    "no-attributes": (SEMANTIC, "an attribute of something that has none"),
    "function-not-called": (SEMANTIC, "a function named where its result is needed"),
    "method-not-called": (SEMANTIC, "an actor method named where its result is needed"),
    "bad-method-call": (SEMANTIC, "an actor or pool method written in the wrong form"),
    "unknown-function": (SEMANTIC, "a builtin that does not exist"),
    "constant-error": (SEMANTIC, "a constant expression that cannot be computed"),
    "not-positive": (SEMANTIC, "a count or size that must be positive"),
    "not-an-integer": (SEMANTIC, "a count or size that must be an integer"),
    "value-too-small": (SEMANTIC, "a parameter default below what its use needs"),
    "out-of-range": (SEMANTIC, "a number outside the range its use allows (a sample's fraction, a negative count)"),
    # -- statements
    "bare-expression": (SEMANTIC, "an expression statement that is not an actor call"),
    "rename-only-stage": (SEMANTIC, "a stage that only renames another collection"),
    "rebind-not-var": (SEMANTIC, "a rebinding of a name that is not a `var`"),
    "rebind-outside-loop": (SEMANTIC, "a var rebound outside `repeat`"),
    "rebind-in-declaring-block": (SEMANTIC, "a var rebound in the block that declares it"),
    "rebind-twice": (SEMANTIC, "a var rebound twice in one round"),
    "duplicate-defaults": (SEMANTIC, "more than one `defaults` block"),
    "misplaced-defaults": (SEMANTIC, "a `defaults` block inside `repeat`"),
    "duplicate-parameter": (SEMANTIC, "a pipeline parameter declared twice"),
    "unknown-type": (SEMANTIC, "a parameter type pipec does not know"),
    "non-literal-default": (SEMANTIC, "a parameter default that is not a literal"),
    "unknown-source": (SEMANTIC, "a source kind that does not exist"),
    "sharded-not-callable": (SEMANTIC, "`sharded` on a source that is not a Python callable"),
    "source-in-expression": (SEMANTIC, "a source made inside an expression"),
    "unknown-sink-format": (SEMANTIC, "a sink format that does not exist"),
    "missing-partitions": (SEMANTIC, "a `range` or callable source without `partitions k`"),
    "misplaced-batch-form": (SEMANTIC, "`as pandas|arrow|numpy` on an operation other than `map_batches`"),
    "unknown-batch-form": (SEMANTIC, "a batch form other than pandas, arrow or numpy"),
    "round-sink-without-file": (SEMANTIC, "a sink inside `repeat` without a file to write each round"),
    "round-sink-path": (SEMANTIC, "a sink inside `repeat` whose path does not name every round index"),
    "bad-path-template": (SEMANTIC, "a sink path with an unclosed or empty `{...}` field"),
    "when-outside-loop": (SEMANTIC, "a `when` block outside `repeat`"),
    "sink-as-data": (SEMANTIC, "a sink read as if it were data"),
    # -- actors
    "pool-without-size": (SEMANTIC, "an actor pool without `x N`"),
    "size-without-pool": (SEMANTIC, "`x N` on an actor that is not a pool"),
    "pool-called-directly": (SEMANTIC, "a pool method called as a statement"),
    "each-without-pool": (SEMANTIC, "`.each.` on an actor that is not a pool"),
    "single-actor-as-pool": (SEMANTIC, "a single actor used to serve a stage"),
    "pool-as-handle": (SEMANTIC, "an actor pool passed to a stage as a handle"),
    "actor-as-value": (SEMANTIC, "an actor used as a value outside `with name = actor`"),
    "duplicate-binding": (SEMANTIC, "a stage binding given twice"),
    # -- options
    "duplicate-option": (SEMANTIC, "a stage or actor option given twice"),
    "bad-option-value": (SEMANTIC, "an option value out of range or unreadable"),
    "unknown-resource": (SEMANTIC, "a resource name pipec does not know"),
    # -- lints (warnings)
    "unused": (LINT, "a stage or value that nothing reads"),
    "unused-alias": (LINT, "a module alias that nothing uses"),
    "schedule-dependent": (LINT, "a sink whose value depends on the order tasks reached an actor"),
    "checkpoint-on-pool": (LINT, "`checkpoint` on an actor pool, which has no calls to replay"),
    # -- parameters (`--param`)
    "unknown-parameter": (PARAMETER, "a `--param` the pipeline does not declare"),
    "bad-parameter-value": (PARAMETER, "a `--param` value that is not of the parameter's type"),
    "parameter-too-small": (PARAMETER, "a `--param` value below what its use needs"),
    "missing-parameter": (PARAMETER, "a parameter without a default that was not given"),
    # -- files and backends
    "unreadable-file": (FILE, "a file that cannot be read as a UTF-8 .pipe file"),
    "unsupported": (UNSUPPORTED, "a feature the backend does not have"),
}


def category_of(code: str | None, is_error: bool = True) -> str:
    """The category of ``code``; an uncoded diagnostic counts as semantic (lint if a warning)."""
    if code in CODES:
        return CODES[code][0]
    if code in CATEGORIES:
        return code
    return SEMANTIC if is_error else LINT
