//! The module graph is the architecture: layers that import only downward, and no cycle
//! between sibling modules at any depth. Read from the source (`crate::`, `super::` and
//! `self::` paths), so a new import that breaks the layering fails CI with the line that did.
//!
//! Inline test modules (`#[cfg(test)] mod tests { ... }`) are left out: a test may reach
//! anywhere. The binary's own modules (`main.rs`, `cli/`) use only the public library API.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The library's top-level modules from the bottom layer up. A module may import from its own
/// layer or any layer below (cycles inside a layer are caught by the cycle check).
const LAYERS: &[&[&str]] = &[
    &["config"],
    &[
        "net",
        "logging",
        "access",
        "client_limits",
        "proxy_protocol",
        "signal",
        "systemd",
        "tls",
        "acme",
    ],
    &["forward"],
    &["stats", "events"],
    &["backend"],
    &["balance"],
    &["pool"],
    &["snapshot"],
    &["health", "discovery", "rebalance"],
    &["session"],
    &["listener"],
    &["supervisor"],
    &["report"],
    &["http"],
    &["api", "metrics"],
    &["endpoints"],
    &["daemon", "embed"],
];

type ModulePath = Vec<String>;

/// One `crate::`/`super::` reference from one module to another.
#[derive(Debug, Clone)]
struct Import {
    from: ModulePath,
    to: ModulePath,
    /// `file:line`, for the failure message.
    at: String,
}

#[test]
fn layers_import_only_downward_and_no_module_cycle_exists() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let files = library_files(&src);
    let modules: BTreeSet<ModulePath> = files.iter().map(|(_, path)| path.clone()).collect();
    let imports: Vec<Import> = files
        .iter()
        .flat_map(|(file, module)| imports_of(file, module, &modules))
        .collect();
    assert!(
        imports.len() > 100,
        "too few imports found ({}): is the parser broken?",
        imports.len()
    );

    let mut problems = layer_violations(&imports, &modules);
    problems.extend(cycles(&imports));
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// Each top-level module is in [`LAYERS`], and each import between top-level modules points to
/// the same layer or one below.
fn layer_violations(imports: &[Import], modules: &BTreeSet<ModulePath>) -> Vec<String> {
    let rank = |name: &str| LAYERS.iter().position(|layer| layer.contains(&name));
    let mut problems: Vec<String> = modules
        .iter()
        .filter_map(|path| path.first())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .filter(|name| rank(name).is_none())
        .map(|name| format!("module `{name}` is in no layer: add it to LAYERS"))
        .collect();
    for import in imports {
        let (Some(from), Some(to)) = (import.from.first(), import.to.first()) else {
            continue;
        };
        if let (Some(from_rank), Some(to_rank)) = (rank(from), rank(to))
            && to_rank > from_rank
        {
            problems.push(format!(
                "{}: `{from}` imports `{}` from a higher layer",
                import.at,
                import.to.join("::")
            ));
        }
    }
    problems
}

/// Cycles between siblings: an import from `a::x::y` to `a::z` is an edge `x -> z` among the
/// children of `a`. Imports between a module and its own ancestors or descendants are not edges
/// (a parent re-exports its children; a child uses its parent's types).
fn cycles(imports: &[Import]) -> Vec<String> {
    let mut graphs: BTreeMap<ModulePath, BTreeMap<String, BTreeMap<String, String>>> =
        BTreeMap::new();
    for import in imports {
        let common = import
            .from
            .iter()
            .zip(&import.to)
            .take_while(|(a, b)| a == b)
            .count();
        let (Some(from), Some(to)) = (import.from.get(common), import.to.get(common)) else {
            continue;
        };
        graphs
            .entry(import.from[..common].to_vec())
            .or_default()
            .entry(from.clone())
            .or_default()
            .entry(to.clone())
            .or_insert_with(|| import.at.clone());
    }
    let mut problems = Vec::new();
    for (parent, graph) in &graphs {
        if let Some(cycle) = find_cycle(graph) {
            let prefix = if parent.is_empty() {
                String::new()
            } else {
                format!("{}::", parent.join("::"))
            };
            let steps: Vec<String> = cycle
                .windows(2)
                .map(|pair| {
                    format!(
                        "{prefix}{} -> {prefix}{} ({})",
                        pair[0], pair[1], graph[&pair[0]][&pair[1]]
                    )
                })
                .collect();
            problems.push(format!("module cycle: {}", steps.join(", ")));
        }
    }
    problems
}

/// A cycle as the list of its nodes, the first repeated at the end.
fn find_cycle(graph: &BTreeMap<String, BTreeMap<String, String>>) -> Option<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Open,
        Done,
    }
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeMap<String, String>>,
        marks: &mut BTreeMap<String, Mark>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        match marks.get(node) {
            Some(Mark::Done) => return None,
            Some(Mark::Open) => {
                let start = stack.iter().position(|n| n == node).unwrap_or(0);
                let mut cycle = stack[start..].to_vec();
                cycle.push(node.to_owned());
                return Some(cycle);
            }
            None => {}
        }
        marks.insert(node.to_owned(), Mark::Open);
        stack.push(node.to_owned());
        for next in graph.get(node).into_iter().flat_map(BTreeMap::keys) {
            if let Some(cycle) = visit(next, graph, marks, stack) {
                return Some(cycle);
            }
        }
        stack.pop();
        marks.insert(node.to_owned(), Mark::Done);
        None
    }
    let mut marks = BTreeMap::new();
    graph
        .keys()
        .find_map(|node| visit(node, graph, &mut marks, &mut Vec::new()))
}

/// Every `.rs` file of the library with its module path (`src/a/b.rs` and `src/a/b/mod.rs`
/// are `a::b`); `lib.rs` is the root and only re-exports, so it is left out.
fn library_files(src: &Path) -> Vec<(PathBuf, ModulePath)> {
    let mut files = Vec::new();
    let mut dirs = vec![src.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|extension| extension == "rs") {
                let relative = path.strip_prefix(src).unwrap();
                let mut module: ModulePath = relative
                    .with_extension("")
                    .iter()
                    .map(|part| part.to_string_lossy().into_owned())
                    .collect();
                if module.last().is_some_and(|last| last == "mod") {
                    module.pop();
                }
                let binary = matches!(module.first().map(String::as_str), Some("main" | "cli"));
                if !module.is_empty() && module != ["lib"] && !binary {
                    files.push((path, module));
                }
            }
        }
    }
    files
}

/// The imports of one file, resolved to known modules.
fn imports_of(file: &Path, module: &ModulePath, modules: &BTreeSet<ModulePath>) -> Vec<Import> {
    let text = std::fs::read_to_string(file).unwrap();
    let name = file
        .strip_prefix(Path::new(env!("CARGO_MANIFEST_DIR")))
        .unwrap_or(file)
        .display()
        .to_string();
    let code = code_without_tests(&text);
    let mut imports = Vec::new();
    for (offset, path) in referenced_paths(&code) {
        let Some(absolute) = absolute(&path, module) else {
            continue;
        };
        // The longest prefix that names a module: `crate::a::b::Type` is module `a::b`.
        let Some(target) = (1..=absolute.len())
            .rev()
            .map(|len| absolute[..len].to_vec())
            .find(|prefix| modules.contains(prefix))
        else {
            continue;
        };
        if &target != module {
            let line = code[..offset].matches('\n').count() + 1;
            imports.push(Import {
                from: module.clone(),
                to: target,
                at: format!("{name}:{line}"),
            });
        }
    }
    imports
}

/// The file without its inline test modules (`#[cfg(test)] mod name { ... }`), with `//`
/// comments blanked; line breaks are kept, so offsets still give line numbers.
fn code_without_tests(text: &str) -> String {
    let mut code = String::new();
    let mut previous = "";
    let mut depth: Option<i64> = None;
    for line in text.lines() {
        let line_code = line.split("//").next().unwrap_or("");
        let opens_test_module = previous.trim() == "#[cfg(test)]"
            && line.trim_start().starts_with("mod ")
            && line_code.contains('{');
        if opens_test_module {
            depth = Some(0);
        }
        if let Some(open) = depth.as_mut() {
            *open += line_code.matches('{').count() as i64 - line_code.matches('}').count() as i64;
            if *open <= 0 {
                depth = None;
            }
            code.push('\n');
        } else {
            code.push_str(line_code);
            code.push('\n');
        }
        previous = line;
    }
    code
}

/// Paths starting with `crate`, `super` or `self`, each with the offset where it starts;
/// `crate::{a, b::{c, d}}` gives `crate::a`, `crate::b::c` and `crate::b::d`, across lines.
fn referenced_paths(code: &str) -> Vec<(usize, Vec<String>)> {
    let mut paths = Vec::new();
    let mut start = 0;
    while let Some(offset) = ["crate::", "super::", "self::"]
        .iter()
        .filter_map(|head| code[start..].find(head))
        .min()
    {
        let at = start + offset;
        let preceded_by_ident = code[..at]
            .chars()
            .last()
            .is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':');
        let mut found = Vec::new();
        let end = expand(code, at, Vec::new(), &mut found);
        if !preceded_by_ident {
            paths.extend(found.into_iter().map(|path| (at, path)));
        }
        start = end.max(at + 1);
    }
    paths
}

/// Reads the path at byte `at` after `prefix`, expanding `{...}` groups into `out`; returns
/// where it ended.
fn expand(code: &str, at: usize, prefix: Vec<String>, out: &mut Vec<Vec<String>>) -> usize {
    let skip_space = |position: usize| {
        let rest = &code[position..];
        position + (rest.len() - rest.trim_start().len())
    };
    let mut segments = prefix;
    let mut read_any = false;
    let mut position = skip_space(at);
    loop {
        if code[position..].starts_with('{') {
            position += 1;
            loop {
                position = skip_space(position);
                match code[position..].chars().next() {
                    None => return code.len(),
                    Some('}') => return position + 1,
                    Some(',') => position += 1,
                    Some(_) => {
                        let before = position;
                        position = expand(code, position, segments.clone(), out);
                        if position == before {
                            position += 1;
                        }
                    }
                }
            }
        }
        let rest = &code[position..];
        let length = rest
            .find(|c: char| !(c.is_alphanumeric() || c == '_'))
            .unwrap_or(rest.len());
        if length == 0 {
            break;
        }
        segments.push(rest[..length].to_owned());
        read_any = true;
        position += length;
        if code[position..].starts_with("::") {
            position += 2;
        } else {
            break;
        }
    }
    if read_any {
        out.push(segments);
    }
    position
}

/// `crate::a::b` is `[a, b]`; `super::x` and `self::x` are resolved against `module`.
fn absolute(path: &[String], module: &ModulePath) -> Option<ModulePath> {
    let mut base: ModulePath = match path.first().map(String::as_str) {
        Some("crate") => Vec::new(),
        Some("self") => module.clone(),
        Some("super") => {
            // In `a/b.rs` and `a/b/mod.rs` alike, `super` is `a`.
            let mut base = module.clone();
            base.pop()?;
            base
        }
        _ => return None,
    };
    let mut rest = path[1..].iter().peekable();
    while rest.peek().is_some_and(|segment| *segment == "super") {
        base.pop()?;
        rest.next();
    }
    base.extend(
        rest.filter(|segment| !segment.is_empty() && *segment != "self")
            .cloned(),
    );
    Some(base)
}

#[test]
fn the_parser_sees_a_cycle_when_there_is_one() {
    let module = |path: &[&str]| path.iter().map(|s| (*s).to_owned()).collect::<ModulePath>();
    let import = |from: &[&str], to: &[&str]| Import {
        from: module(from),
        to: module(to),
        at: "here".to_owned(),
    };
    let graph = [
        import(&["forward", "copy"], &["forward", "direction"]),
        import(&["forward", "direction"], &["forward", "copy"]),
    ];
    assert_eq!(cycles(&graph).len(), 1);
    let ancestors = [
        import(&["backend", "health"], &["backend"]),
        import(&["backend"], &["backend", "health"]),
    ];
    assert!(cycles(&ancestors).is_empty());
    let modules: BTreeSet<ModulePath> = [module(&["config"]), module(&["balance"])]
        .into_iter()
        .collect();
    assert_eq!(
        layer_violations(&[import(&["config"], &["balance"])], &modules).len(),
        1,
        "config may not import the runtime"
    );
    let code = "use crate::{\n    access,\n    net::{self, bind},\n};\nlet x = super::y::Z;";
    let paths: Vec<String> = referenced_paths(code)
        .into_iter()
        .map(|(_, path)| path.join("::"))
        .collect();
    assert_eq!(
        paths,
        [
            "crate::access",
            "crate::net::self",
            "crate::net::bind",
            "super::y::Z"
        ]
    );
}
