//! The crate's layering, checked on the source text: rules that keep import cycles out.

use std::path::Path;

/// `src/error.rs` is a leaf: every module may return its `Error`, so it must import
/// nothing from the crate (no `crate::` and no `super::` path, in code or in docs), or
/// it closes a cycle through the module it names.
#[test]
fn error_module_is_a_leaf() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/error.rs");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let offending: Vec<String> = text
        .lines()
        .enumerate()
        .filter(|(_, line)| line.contains("crate::") || line.contains("super::"))
        .map(|(i, line)| format!("  src/error.rs:{}: {}", i + 1, line.trim()))
        .collect();
    assert!(
        offending.is_empty(),
        "src/error.rs must import nothing from the crate (it is the leaf every module depends on), \
         but it names a path above it; move the type it needs into src/error.rs and re-export it \
         from its old module instead:\n{}",
        offending.join("\n")
    );
}
