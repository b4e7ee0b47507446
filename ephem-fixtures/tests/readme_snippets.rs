//! Every `ephem.toml` form the documentation shows goes through the real
//! loader, so a documented form can never again be one the loader refuses.
//!
//! What is loaded:
//! - every ```` ```toml ```` block of `README.md` and of `examples/**/*.md`
//!   (a service without `image` gets one, nothing else is added);
//! - every `ephem.toml` under `examples/` and `tests/fixtures/`, and the
//!   `tests/fixtures/*.toml` configurations the end-to-end tests use;
//! - the README's key tables: a table is marked by a comment before it,
//!   `<!-- snippet: keys of TABLE -->` (its `key` column names keys of
//!   TABLE, `the file` for the top level) or `<!-- snippet: values of
//!   TABLE.KEY -->` (its `example` column holds values of KEY). In a key
//!   table, a key cell is `` `key` ``, `` `[table] key` ``, `` `[table]`
//!   `key1`, `key2` `` or a whole `` `key = value` ``; a `default` or
//!   `example` cell made only of code spans (one per key) holds TOML values,
//!   and a `type` cell made only of code spans between `|` lists the values
//!   allowed. Each value is loaded as `key = value` in its table, inside a
//!   minimal configuration (a service gets an image and ports 5432, 6379 and
//!   8080; a Helm table gets a chart). Other cells are prose.
//!
//! A block that is meant to be refused is marked `<!-- snippet: refused -->`:
//! it must be refused, and when a ```` ```text ```` block starting with
//! `error:` follows it, that is the exact message. A table with a `key`
//! first column or an `example` column, but no marker, fails the test:
//! nothing is skipped silently.

use std::path::{Path, PathBuf};

use ephem_fixtures::EphemConfig;
use pulldown_cmark::{CodeBlockKind, Event, Options, Parser, Tag, TagEnd};

/// One configuration to load, and where it was found.
struct Snippet {
    origin: String,
    text: String,
    expect: Expect,
}

enum Expect {
    Loads,
    /// Refused, with this exact message when the README shows it.
    Refused(Option<String>),
}

/// A marker comment before a block or a table.
#[derive(Clone, Debug, PartialEq)]
enum Marker {
    Refused,
    KeysOf(String),
    ValuesOf(String),
}

/// A table cell: code spans and the text around them.
#[derive(Clone, Debug, Default)]
struct Cell {
    pieces: Vec<Piece>,
}

#[derive(Clone, Debug)]
enum Piece {
    Code(String),
    Text(String),
}

impl Cell {
    fn codes(&self) -> Vec<&str> {
        self.pieces
            .iter()
            .filter_map(|p| match p {
                Piece::Code(c) => Some(c.as_str()),
                Piece::Text(_) => None,
            })
            .collect()
    }

    /// The code spans, when nothing but `separators` and spaces stands
    /// between them: the cell is then a list of values, not prose.
    fn only_codes(&self, separators: &str) -> Option<Vec<&str>> {
        let prose = self.pieces.iter().any(|p| match p {
            Piece::Text(t) => t
                .chars()
                .any(|c| !c.is_whitespace() && !separators.contains(c)),
            Piece::Code(_) => false,
        });
        let codes = self.codes();
        (!prose && !codes.is_empty()).then_some(codes)
    }

    fn plain(&self) -> String {
        self.pieces
            .iter()
            .map(|p| match p {
                Piece::Code(c) | Piece::Text(c) => c.as_str(),
            })
            .collect::<String>()
            .trim()
            .to_lowercase()
    }
}

struct Table {
    line: usize,
    header: Vec<Cell>,
    rows: Vec<(usize, Vec<Cell>)>,
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset].matches('\n').count() + 1
}

fn parse_marker(html: &str) -> Option<Marker> {
    let body = html
        .trim()
        .strip_prefix("<!--")?
        .strip_suffix("-->")?
        .trim();
    let rest = body.strip_prefix("snippet:")?.trim();
    Some(if rest == "refused" {
        Marker::Refused
    } else if let Some(table) = rest.strip_prefix("keys of ") {
        Marker::KeysOf(table.trim().to_owned())
    } else if let Some(key) = rest.strip_prefix("values of ") {
        Marker::ValuesOf(key.trim().to_owned())
    } else {
        panic!("unknown snippet marker {html:?}; use `refused`, `keys of TABLE` or `values of TABLE.KEY`")
    })
}

/// The snippets of one Markdown file; problems with the file itself (an
/// unmarked key table, a marker on nothing) go to `problems`.
fn markdown_snippets(name: &str, text: &str, problems: &mut Vec<String>) -> Vec<Snippet> {
    let mut snippets = Vec::new();
    let mut marker: Option<(usize, Marker)> = None;
    // The refused block whose message a following ```text block may give.
    let mut awaiting_error: Option<usize> = None;
    let mut code: Option<(usize, String, String)> = None;
    let mut table: Option<Table> = None;
    let mut cell: Option<Cell> = None;
    let mut row: Vec<Cell> = Vec::new();
    let mut in_head = false;
    for (event, range) in Parser::new_ext(text, Options::ENABLE_TABLES).into_offset_iter() {
        let line = line_of(text, range.start);
        match event {
            Event::Html(html) | Event::InlineHtml(html) => {
                if let Some(m) = parse_marker(&html) {
                    if let Some((at, old)) = marker.replace((line, m)) {
                        problems.push(format!("{name}:{at}: marker {old:?} applies to nothing"));
                    }
                }
            }
            Event::Start(Tag::CodeBlock(kind)) => {
                let info = match kind {
                    CodeBlockKind::Fenced(info) => info.to_string(),
                    CodeBlockKind::Indented => String::new(),
                };
                code = Some((line, info, String::new()));
            }
            Event::Text(t) if code.is_some() => code.as_mut().unwrap().2.push_str(&t),
            Event::End(TagEnd::CodeBlock) => {
                let (at, info, body) = code.take().unwrap();
                let lang = info.split_whitespace().next().unwrap_or("");
                if lang == "toml" {
                    let expect = match marker.take() {
                        None => Expect::Loads,
                        Some((_, Marker::Refused)) => {
                            awaiting_error = Some(snippets.len());
                            Expect::Refused(None)
                        }
                        Some((m_at, other)) => {
                            problems.push(format!(
                                "{name}:{m_at}: marker {other:?} is for tables, not the block at line {at}"
                            ));
                            Expect::Loads
                        }
                    };
                    snippets.push(Snippet {
                        origin: format!("{name}:{at} (toml block)"),
                        text: body,
                        expect,
                    });
                    continue;
                }
                if let Some((m_at, m)) = marker.take() {
                    problems.push(format!(
                        "{name}:{m_at}: marker {m:?} stands before a {lang:?} block, not toml"
                    ));
                }
                if let Some(i) = awaiting_error.take() {
                    if let Some(error) = body.trim().strip_prefix("error: ") {
                        snippets[i].expect = Expect::Refused(Some(error.to_owned()));
                    }
                }
            }
            Event::Start(Tag::Table(_)) => {
                table = Some(Table {
                    line,
                    header: Vec::new(),
                    rows: Vec::new(),
                })
            }
            Event::Start(Tag::TableHead) => in_head = true,
            Event::End(TagEnd::TableHead) => {
                in_head = false;
                table.as_mut().unwrap().header = std::mem::take(&mut row);
            }
            Event::Start(Tag::TableRow) => row.clear(),
            Event::End(TagEnd::TableRow) => {
                let t = table.as_mut().unwrap();
                t.rows.push((line, std::mem::take(&mut row)));
            }
            Event::Start(Tag::TableCell) => cell = Some(Cell::default()),
            Event::End(TagEnd::TableCell) => row.push(cell.take().unwrap()),
            Event::Code(c) if cell.is_some() => cell
                .as_mut()
                .unwrap()
                .pieces
                .push(Piece::Code(c.to_string())),
            Event::Text(t) if cell.is_some() => cell
                .as_mut()
                .unwrap()
                .pieces
                .push(Piece::Text(t.to_string())),
            Event::End(TagEnd::Table) => {
                let t = table.take().unwrap();
                let _ = in_head;
                let m = marker.take();
                snippets.extend(table_snippets(name, &t, m, problems));
            }
            _ => {}
        }
    }
    if let Some((at, m)) = marker {
        problems.push(format!("{name}:{at}: marker {m:?} applies to nothing"));
    }
    snippets
}

fn column(table: &Table, name: &str) -> Option<usize> {
    table.header.iter().position(|c| c.plain() == name)
}

fn table_snippets(
    name: &str,
    table: &Table,
    marker: Option<(usize, Marker)>,
    problems: &mut Vec<String>,
) -> Vec<Snippet> {
    let first = table.header.first().map(Cell::plain).unwrap_or_default();
    let example = column(table, "example");
    let marker = match marker {
        Some((_, m)) => m,
        None if first == "key" || example.is_some() => {
            problems.push(format!(
                "{name}:{}: a key table without a `<!-- snippet: keys of TABLE -->` or `<!-- snippet: values of TABLE.KEY -->` comment before it",
                table.line
            ));
            return Vec::new();
        }
        None => return Vec::new(),
    };
    let mut out = Vec::new();
    let origin = |line: usize, what: &str| format!("{name}:{line} (table: {what})");
    match marker {
        Marker::Refused => problems.push(format!(
            "{name}:{}: `refused` is for toml blocks, not tables",
            table.line
        )),
        Marker::ValuesOf(path) => {
            let Some(col) = example else {
                problems.push(format!(
                    "{name}:{}: `values of` needs an example column",
                    table.line
                ));
                return out;
            };
            let (table_path, key) = path.rsplit_once('.').expect("TABLE.KEY");
            for (line, row) in &table.rows {
                match row[col].only_codes(",") {
                    Some(values) => {
                        for value in values {
                            out.push(Snippet {
                                origin: origin(*line, &format!("{key} = {value}")),
                                text: fragment(table_path, key, value),
                                expect: Expect::Loads,
                            });
                        }
                    }
                    None => problems.push(format!(
                        "{name}:{line}: the example cell is not a TOML value in a code span"
                    )),
                }
            }
        }
        Marker::KeysOf(path) => {
            let base = if path == "the file" {
                ""
            } else {
                path.as_str()
            };
            let key_col = column(table, "key").expect("a key table has a key column");
            for (line, row) in &table.rows {
                let (table_path, keys, forms) = key_cell(base, &row[key_col]);
                for form in forms {
                    let (key, value) = form.split_once('=').expect("a whole form");
                    out.push(Snippet {
                        origin: origin(*line, &form),
                        text: fragment(&table_path, key.trim(), value.trim()),
                        expect: Expect::Loads,
                    });
                }
                let mut values: Vec<(String, String)> = Vec::new();
                for col in ["default", "example"] {
                    let Some(c) = column(table, col) else {
                        continue;
                    };
                    let Some(codes) = row[c].only_codes(",") else {
                        continue;
                    };
                    if codes.len() != keys.len() {
                        problems.push(format!(
                            "{name}:{line}: {} {col} values for {} keys",
                            codes.len(),
                            keys.len()
                        ));
                        continue;
                    }
                    values.extend(
                        keys.iter()
                            .cloned()
                            .zip(codes.iter().map(|c| c.to_string())),
                    );
                }
                if let Some(c) = column(table, "type") {
                    if let Some(codes) = row[c].only_codes("|\\") {
                        for key in &keys {
                            values.extend(codes.iter().map(|v| (key.clone(), v.to_string())));
                        }
                    }
                }
                values.sort();
                values.dedup();
                for (key, value) in values {
                    let place = if table_path.is_empty() {
                        String::new()
                    } else {
                        format!("[{table_path}] ")
                    };
                    out.push(Snippet {
                        origin: origin(*line, &format!("{place}{key} = {value}")),
                        text: fragment(&table_path, &key, &value),
                        expect: Expect::Loads,
                    });
                }
            }
        }
    }
    out
}

/// A key cell: the table it is in, its keys, and its whole `key = value`
/// forms.
fn key_cell(base: &str, cell: &Cell) -> (String, Vec<String>, Vec<String>) {
    let mut table = base.to_owned();
    let mut keys = Vec::new();
    let mut forms = Vec::new();
    for code in cell.codes() {
        let code = code.trim();
        if let Some(rest) = code.strip_prefix('[') {
            let (name, key) = rest.split_once(']').expect("a closed [table]");
            table = name.trim().to_owned();
            if !key.trim().is_empty() {
                keys.push(key.trim().to_owned());
            }
        } else if code.contains('=') {
            forms.push(code.to_owned());
        } else {
            keys.push(code.to_owned());
        }
    }
    (table, keys, forms)
}

/// `key = value` in `table`, inside the least a configuration needs.
fn fragment(table: &str, key: &str, value: &str) -> String {
    let table = table.replace("NAME", "svc");
    let service: &[(&str, &str)] = &[
        ("image", "\"busybox:1.36\""),
        ("ports", "[5432, 6379, 8080]"),
    ];
    let mut text = String::new();
    let base: &[(&str, &str)] = match table.as_str() {
        "services.svc" => service,
        // A table within a service (`[services.svc.kubernetes]`): the
        // service itself comes first.
        t if t.starts_with("services.svc.") => {
            text.push_str("[services.svc]\n");
            for (k, v) in service {
                text.push_str(&format!("{k} = {v}\n"));
            }
            &[]
        }
        "kubernetes.helm" => &[("chart", "\"./chart\"")],
        _ => &[],
    };
    if !table.is_empty() {
        text.push_str(&format!("[{table}]\n"));
    }
    for (k, v) in base.iter().filter(|(k, _)| *k != key) {
        text.push_str(&format!("{k} = {v}\n"));
    }
    text.push_str(&format!("{key} = {value}\n"));
    text
}

/// A block's services without `image` get one; the rest is as written.
fn with_images(text: &str) -> Result<String, String> {
    let table: toml::Table = toml::from_str(text).map_err(|e| format!("not TOML: {e}"))?;
    let Some(services) = table.get("services").and_then(|s| s.as_table()) else {
        return Ok(text.to_owned());
    };
    let mut out = String::new();
    for line in text.lines() {
        out.push_str(line);
        out.push('\n');
        let header = line.split('#').next().unwrap_or("").trim();
        let Some(name) = header
            .strip_prefix("[services.")
            .and_then(|n| n.strip_suffix(']'))
            // `[services.a.kubernetes]` is a table of service a, not one.
            .filter(|n| !n.contains('.'))
        else {
            continue;
        };
        let has_image = services
            .get(name)
            .and_then(|s| s.as_table())
            .is_some_and(|s| s.contains_key("image"));
        if !has_image {
            out.push_str("image = \"busybox:1.36\"\n");
        }
    }
    Ok(out)
}

fn markdown_files(root: &Path) -> Vec<PathBuf> {
    let mut files = vec![root.join("README.md")];
    files.extend(walk(&root.join("examples"), &|p| {
        p.extension().is_some_and(|e| e == "md")
    }));
    files
}

fn config_files(root: &Path) -> Vec<PathBuf> {
    let is_ephem = |p: &Path| p.file_name().is_some_and(|n| n == "ephem.toml");
    let mut files = walk(&root.join("examples"), &is_ephem);
    files.extend(walk(&root.join("tests/fixtures"), &|p| {
        is_ephem(p)
            || (p.parent().is_some_and(|d| d.ends_with("tests/fixtures"))
                && p.extension().is_some_and(|e| e == "toml"))
    }));
    files
}

fn walk(dir: &Path, keep: &dyn Fn(&Path) -> bool) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    let mut entries: Vec<_> = entries.flatten().map(|e| e.path()).collect();
    entries.sort();
    for path in entries {
        let name = path.file_name().unwrap_or_default();
        if path.is_dir() {
            if name != "target" && !name.to_string_lossy().starts_with('.') {
                out.extend(walk(&path, keep));
            }
        } else if keep(&path) {
            out.push(path);
        }
    }
    out
}

/// Loads one snippet; `Err` says why it does not do what it should.
fn check(snippet: &Snippet) -> Result<(), String> {
    match &snippet.expect {
        Expect::Loads => {
            let text = with_images(&snippet.text)?;
            EphemConfig::parse(&text, "ephem.toml")
                .map(|_| ())
                .map_err(|e| format!("{e}\n--- loaded:\n{text}---"))
        }
        Expect::Refused(message) => match EphemConfig::parse(&snippet.text, "ephem.toml") {
            Ok(_) => Err("marked refused, but it loads".to_owned()),
            Err(e) => match message {
                Some(m) if *m != e.to_string() => Err(format!(
                    "the README shows the error\n  {m}\nbut the loader says\n  {e}"
                )),
                _ => Ok(()),
            },
        },
    }
}

fn relative(root: &Path, path: &Path) -> String {
    path.strip_prefix(root)
        .unwrap_or(path)
        .display()
        .to_string()
}

#[test]
fn every_documented_configuration_loads() {
    let root = workspace_root();
    let mut problems = Vec::new();
    let mut snippets = Vec::new();
    for file in markdown_files(&root) {
        let text = std::fs::read_to_string(&file).unwrap();
        snippets.extend(markdown_snippets(
            &relative(&root, &file),
            &text,
            &mut problems,
        ));
    }
    let documented = snippets.len();
    let blocks = snippets
        .iter()
        .filter(|s| s.origin.contains("toml block"))
        .count();
    for file in config_files(&root) {
        snippets.push(Snippet {
            origin: relative(&root, &file),
            text: std::fs::read_to_string(&file).unwrap(),
            expect: Expect::Loads,
        });
    }
    for snippet in &snippets {
        if let Err(why) = check(snippet) {
            problems.push(format!("{}: {why}", snippet.origin));
        }
    }
    println!(
        "{} snippets: {blocks} toml blocks and {} table values in the docs, {} files",
        snippets.len(),
        documented - blocks,
        snippets.len() - documented
    );
    // The extractor itself must keep finding what is there: the README has
    // four toml blocks and over 35 table values, the examples and fixtures
    // several files.
    assert!(blocks >= 4, "only {blocks} toml blocks found");
    assert!(
        documented - blocks >= 35,
        "only {} table values found",
        documented - blocks
    );
    assert!(
        snippets.len() - documented >= 5,
        "too few configuration files found"
    );
    assert!(
        problems.is_empty(),
        "{} documented forms do not do what the documentation says:\n\n{}",
        problems.len(),
        problems.join("\n\n")
    );
}

#[test]
fn the_extractor_reads_markers_cells_and_forms() {
    let doc = r#"
<!-- snippet: keys of services.NAME -->
| key | type | default | meaning |
| --- | --- | --- | --- |
| `ports` | integers | `[]` | prose with `code` |
| `wait` | inline table | running | prose |
| `reset = "redis"` | | | |

<!-- snippet: keys of kubernetes -->
| key | type | default | meaning |
| --- | --- | --- | --- |
| `[kubernetes.quota]` `limits-cpu`, `pods` | quantity | `"8"`, `20` | x |
| `reach` | `"auto"` \| `"cluster-dns"` | `"auto"` | x |

| key | meaning |
| --- | --- |
| `unmarked` | fails |

<!-- snippet: refused -->
```toml
[services.x]
```

```text
error: the message
```
"#;
    let mut problems = Vec::new();
    let snippets = markdown_snippets("doc.md", doc, &mut problems);
    let origins: Vec<&str> = snippets.iter().map(|s| s.origin.as_str()).collect();
    assert_eq!(
        origins,
        [
            "doc.md:5 (table: [services.NAME] ports = [])",
            "doc.md:7 (table: reset = \"redis\")",
            "doc.md:12 (table: [kubernetes.quota] limits-cpu = \"8\")",
            "doc.md:12 (table: [kubernetes.quota] pods = 20)",
            "doc.md:13 (table: [kubernetes] reach = \"auto\")",
            "doc.md:13 (table: [kubernetes] reach = \"cluster-dns\")",
            "doc.md:20 (toml block)",
        ]
    );
    assert_eq!(
        snippets[0].text,
        "[services.svc]\nimage = \"busybox:1.36\"\nports = []\n"
    );
    assert_eq!(
        snippets[1].text,
        "[services.svc]\nimage = \"busybox:1.36\"\nports = [5432, 6379, 8080]\nreset = \"redis\"\n"
    );
    assert!(matches!(&snippets[6].expect, Expect::Refused(Some(m)) if m == "the message"));
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(problems[0].starts_with("doc.md:15: a key table without"));
    assert_eq!(
        with_images("[services.a]\nports = [1]\n[services.b] # x\nimage = \"y\"\n").unwrap(),
        "[services.a]\nimage = \"busybox:1.36\"\nports = [1]\n[services.b] # x\nimage = \"y\"\n"
    );
}
