//! Reading a rules directory into a [`RuleSet`]: files, lists, rules, and every error.
//!
//! Loading runs in three passes so that each can report all of its problems: parse
//! every file (syntax errors stop only that file), collect every named list (lists are
//! shared by all files, so a rule may use a list defined in a later file), then compile
//! every rule. Errors carry a key path; [`super::yaml::locate`] turns it into a line and
//! column only when the load failed, so a good load pays nothing for positions.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_yaml_ng::Value;

use super::actions;
use super::conditions::{self, Always};
use super::error::{LoadError, LoadErrors};
use super::lists::{NetSet, Pattern, TextSet, check_regex, looks_like_net};
use super::yaml::{KeyPath, kind_of, locate, one_or_many};
use super::{Mode, Rule, RuleSet};
use crate::config::IpNet;
use crate::envelope::Stage;

pub(crate) struct SourceFile {
    pub path: PathBuf,
    pub text: String,
}

struct Pending {
    file: usize,
    path: KeyPath,
    at_key: bool,
    message: String,
}

/// Collected errors: located ones, and ones still waiting for a position.
#[derive(Default)]
pub(crate) struct Diag {
    pending: Vec<Pending>,
    located: Vec<LoadError>,
}

impl Diag {
    fn file_error(&mut self, file: &Path, message: String) {
        self.located.push(LoadError {
            file: file.to_owned(),
            line: 0,
            column: 0,
            key_path: String::new(),
            message,
        });
    }

    fn finish(self, files: &[SourceFile]) -> Vec<LoadError> {
        let mut out = self.located;
        for p in self.pending {
            let f = &files[p.file];
            let (line, column) = locate(&f.text, &p.path, p.at_key);
            out.push(LoadError {
                file: f.path.clone(),
                line,
                column,
                key_path: p.path.to_string(),
                message: p.message,
            });
        }
        out.sort_by(|a, b| (&a.file, a.line, a.column).cmp(&(&b.file, b.line, b.column)));
        out
    }
}

/// Where a list item came from, to report its errors there.
#[derive(Debug, Clone)]
enum Origin {
    Yaml {
        file: usize,
        path: KeyPath,
    },
    Text {
        file: PathBuf,
        line: usize,
        column: usize,
    },
}

#[derive(Debug, Clone)]
struct ListItem {
    text: String,
    origin: Origin,
}

#[derive(Default)]
struct ListDef {
    items: Vec<ListItem>,
    /// Compiled on first use as networks / as text; `Some(None)` when that failed, so
    /// the item errors are reported once however many rules use the list.
    nets: Option<Option<Arc<NetSet>>>,
    texts: Option<Option<Arc<TextSet>>>,
}

/// The named lists of the whole rule set.
#[derive(Default)]
pub(crate) struct Lists {
    defs: HashMap<String, ListDef>,
    /// Included list files in first-use order, with their contents (for the hash).
    files: Vec<(PathBuf, Vec<u8>)>,
}

/// Decoding state for one file: where errors go, which stage the current rule is at
/// (`None` when the rule's stage is itself invalid, so stage checks are skipped).
pub(crate) struct Decoder<'a> {
    pub file: usize,
    pub stage: Option<Stage>,
    diag: &'a mut Diag,
    lists: &'a mut Lists,
}

impl Decoder<'_> {
    pub fn error(&mut self, path: &KeyPath, message: impl Into<String>) {
        self.push(path, false, message.into());
    }

    /// An error about a key itself (unknown field), located at the key.
    pub fn error_at_key(&mut self, path: &KeyPath, message: impl Into<String>) {
        self.push(path, true, message.into());
    }

    fn push(&mut self, path: &KeyPath, at_key: bool, message: String) {
        self.diag.pending.push(Pending {
            file: self.file,
            path: path.clone(),
            at_key,
            message,
        });
    }

    fn item_error(&mut self, name: &str, origin: &Origin, message: String) {
        match origin {
            Origin::Yaml { file, path } => self.diag.pending.push(Pending {
                file: *file,
                path: path.clone(),
                at_key: false,
                message,
            }),
            Origin::Text { file, line, column } => self.diag.located.push(LoadError {
                file: file.clone(),
                line: *line,
                column: *column,
                key_path: format!("lists.{name}"),
                message,
            }),
        }
    }

    /// The entries of a mapping whose keys must all be in `allowed` (the hand-written
    /// equivalent of `#[serde(deny_unknown_fields)]`, which goes on after a bad key).
    pub fn mapping<'v>(
        &mut self,
        v: &'v Value,
        path: &KeyPath,
        allowed: &[&str],
    ) -> Option<Vec<(&'v str, &'v Value)>> {
        let Value::Mapping(m) = v else {
            self.error(path, format!("expected a mapping, found {}", kind_of(v)));
            return None;
        };
        let mut out = Vec::new();
        let mut ok = true;
        for (k, val) in m {
            match k.as_str() {
                Some(key) if allowed.contains(&key) => out.push((key, val)),
                Some(key) => {
                    let exp: Vec<String> = allowed.iter().map(|a| format!("`{a}`")).collect();
                    self.error_at_key(
                        &path.key(key),
                        format!("unknown field `{key}`, expected one of {}", exp.join(", ")),
                    );
                    ok = false;
                }
                None => {
                    self.error(path, format!("keys must be names, found {}", kind_of(k)));
                    ok = false;
                }
            }
        }
        ok.then_some(out)
    }

    pub fn string<'v>(&mut self, v: &'v Value, path: &KeyPath) -> Option<&'v str> {
        match v {
            Value::String(s) => Some(s),
            other => {
                self.error(path, format!("expected a string, found {}", kind_of(other)));
                None
            }
        }
    }

    pub fn bool(&mut self, v: &Value, path: &KeyPath) -> Option<bool> {
        match v {
            Value::Bool(b) => Some(*b),
            other => {
                self.error(
                    path,
                    format!("expected true or false, found {}", kind_of(other)),
                );
                None
            }
        }
    }

    pub fn u64(&mut self, v: &Value, path: &KeyPath) -> Option<u64> {
        match v.as_u64() {
            Some(n) => Some(n),
            None => {
                self.error(
                    path,
                    format!("expected a non-negative integer, found {}", describe(v)),
                );
                None
            }
        }
    }

    /// Networks from a scalar (a network, or the name of a list), or an inline list.
    pub fn nets_from(&mut self, v: &Value, path: &KeyPath) -> Option<(Arc<NetSet>, String)> {
        match v {
            Value::String(s) => {
                if let Ok(n) = s.parse::<IpNet>() {
                    return Some((Arc::new(NetSet::from_nets([n])), s.clone()));
                }
                if looks_like_net(s) {
                    self.error(path, format!("invalid network {s:?}"));
                    return None;
                }
                let set = self.net_list(s, path)?;
                Some((set, format!("list {s}")))
            }
            Value::Sequence(items) => {
                let mut nets = Vec::new();
                let mut ok = true;
                for (i, item) in items.iter().enumerate() {
                    let p = path.index(i);
                    match item {
                        Value::String(s) => match s.parse::<IpNet>() {
                            Ok(n) => nets.push(n),
                            Err(_) => {
                                self.error(&p, format!("invalid network {s:?}"));
                                ok = false;
                            }
                        },
                        other => {
                            self.error(&p, format!("expected a network, found {}", kind_of(other)));
                            ok = false;
                        }
                    }
                }
                if !ok {
                    return None;
                }
                let label = inline_label(items);
                Some((Arc::new(NetSet::from_nets(nets)), label))
            }
            other => {
                self.error(
                    path,
                    format!(
                        "expected a network, a list name or a list, found {}",
                        kind_of(other)
                    ),
                );
                None
            }
        }
    }

    /// `in:` for text: the name of a list, or inline items.
    pub fn text_in(&mut self, v: &Value, path: &KeyPath) -> Option<(Arc<TextSet>, String)> {
        match v {
            Value::String(name) => {
                let set = self.text_list(name, path)?;
                Some((set, format!("list {name}")))
            }
            Value::Sequence(_) => self.inline_patterns(v, path, Pattern::classify),
            other => {
                self.error(
                    path,
                    format!("expected a list name or a list, found {}", kind_of(other)),
                );
                None
            }
        }
    }

    /// Patterns written in place: one string or a list of strings, each turned into a
    /// pattern by `make`.
    pub fn inline_patterns(
        &mut self,
        v: &Value,
        path: &KeyPath,
        make: impl Fn(&str) -> Pattern,
    ) -> Option<(Arc<TextSet>, String)> {
        let items = one_or_many(v, path);
        let mut patterns = Vec::new();
        let mut ok = true;
        for (p, item) in &items {
            let Some(s) = self.string(item, p) else {
                ok = false;
                continue;
            };
            let pat = make(s);
            if let Some(src) = pat.regex_source()
                && let Err(e) = check_regex(&src)
            {
                self.error(p, e);
                ok = false;
                continue;
            }
            patterns.push(pat);
        }
        if !ok {
            return None;
        }
        let label = match (v, patterns.as_slice()) {
            (Value::Sequence(_), _) => inline_label_patterns(&patterns),
            (_, [one]) => one.to_string(),
            _ => String::new(),
        };
        match TextSet::new(patterns) {
            Ok(set) => Some((Arc::new(set), label)),
            Err(e) => {
                self.error(path, e);
                None
            }
        }
    }

    pub fn net_list(&mut self, name: &str, path: &KeyPath) -> Option<Arc<NetSet>> {
        let Some(def) = self.lists.defs.get_mut(name) else {
            self.error(path, format!("unknown list `{name}`"));
            return None;
        };
        if let Some(done) = &def.nets {
            return done.clone();
        }
        let items = def.items.clone();
        let mut nets = Vec::with_capacity(items.len());
        let mut ok = true;
        for it in &items {
            match it.text.parse::<IpNet>() {
                Ok(n) => nets.push(n),
                Err(_) => {
                    self.item_error(name, &it.origin, format!("invalid network {:?}", it.text));
                    ok = false;
                }
            }
        }
        let result = ok.then(|| Arc::new(NetSet::from_nets(nets)));
        if let Some(def) = self.lists.defs.get_mut(name) {
            def.nets = Some(result.clone());
        }
        result
    }

    pub fn text_list(&mut self, name: &str, path: &KeyPath) -> Option<Arc<TextSet>> {
        let Some(def) = self.lists.defs.get_mut(name) else {
            self.error(path, format!("unknown list `{name}`"));
            return None;
        };
        if let Some(done) = &def.texts {
            return done.clone();
        }
        let items = def.items.clone();
        let mut patterns = Vec::with_capacity(items.len());
        let mut ok = true;
        for it in &items {
            let pat = Pattern::classify(&it.text);
            if let Some(src) = pat.regex_source()
                && let Err(e) = check_regex(&src)
            {
                self.item_error(name, &it.origin, e);
                ok = false;
                continue;
            }
            patterns.push(pat);
        }
        let result = if ok {
            match TextSet::new(patterns) {
                Ok(s) => Some(Arc::new(s)),
                Err(e) => {
                    self.error(path, e);
                    None
                }
            }
        } else {
            None
        };
        if let Some(def) = self.lists.defs.get_mut(name) {
            def.texts = Some(result.clone());
        }
        result
    }
}

fn describe(v: &Value) -> String {
    match v {
        Value::Number(n) => format!("{n}"),
        Value::String(s) => format!("{s:?}"),
        other => kind_of(other).to_owned(),
    }
}

fn inline_label(items: &[Value]) -> String {
    let shown: Vec<String> = items
        .iter()
        .take(4)
        .map(|v| v.as_str().unwrap_or("?").to_owned())
        .collect();
    let more = if items.len() > 4 { ", …" } else { "" };
    format!("[{}{more}]", shown.join(", "))
}

fn inline_label_patterns(ps: &[Pattern]) -> String {
    let shown: Vec<String> = ps.iter().take(4).map(ToString::to_string).collect();
    let more = if ps.len() > 4 { ", …" } else { "" };
    format!("[{}{more}]", shown.join(", "))
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// The `*.yaml` files of `dir` (not hidden ones: editors keep their temporary files
/// there), sorted by file name.
fn rule_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.starts_with('.') || !name.ends_with(".yaml") {
            continue;
        }
        let path = dir.join(name);
        if path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

pub(crate) fn load_dir(dir: &Path) -> Result<RuleSet, LoadErrors> {
    let mut diag = Diag::default();
    let paths = match rule_files(dir) {
        Ok(p) => p,
        Err(e) => {
            diag.file_error(dir, format!("cannot read rules directory: {e}"));
            return Err(LoadErrors(diag.finish(&[])));
        }
    };
    let mut files = Vec::new();
    for path in paths {
        match std::fs::read_to_string(&path) {
            Ok(text) => files.push(SourceFile { path, text }),
            Err(e) => diag.file_error(&path, format!("cannot read: {e}")),
        }
    }
    load_sources(dir, files, diag)
}

/// Loads rule files already read (`dir` is where their `file:` lists are found), adding
/// to the errors `diag` already holds.
pub(crate) fn load_sources(
    dir: &Path,
    files: Vec<SourceFile>,
    mut diag: Diag,
) -> Result<RuleSet, LoadErrors> {
    // Pass 1: syntax.
    let docs: Vec<Option<Value>> = files
        .iter()
        .map(|f| match serde_yaml_ng::from_str::<Value>(&f.text) {
            Ok(v) => Some(v),
            Err(e) => {
                let (line, column) = e.location().map_or((1, 1), |l| (l.line(), l.column()));
                let mut msg = e.to_string();
                let at = format!(" at line {line} column {column}");
                if let Some(i) = msg.find(&at) {
                    msg.replace_range(i..i + at.len(), "");
                }
                diag.located.push(LoadError {
                    file: f.path.clone(),
                    line,
                    column,
                    key_path: String::new(),
                    message: msg,
                });
                None
            }
        })
        .collect();

    // Pass 2: the shape of each file and every list.
    let mut lists = Lists::default();
    let mut rule_seqs: Vec<(usize, &Vec<Value>)> = Vec::new();
    for (i, doc) in docs.iter().enumerate() {
        let Some(doc) = doc else { continue };
        let mut d = Decoder {
            file: i,
            stage: None,
            diag: &mut diag,
            lists: &mut lists,
        };
        if doc.is_null() {
            continue;
        }
        let Some(entries) = d.mapping(doc, &KeyPath::root(), &["lists", "rules"]) else {
            continue;
        };
        for (k, v) in entries {
            let path = KeyPath::root().key(k);
            if k == "lists" {
                read_lists(&mut d, dir, v, &path);
            } else {
                match v {
                    Value::Sequence(rules) => rule_seqs.push((i, rules)),
                    Value::Null => {}
                    other => d.error(
                        &path,
                        format!("expected a list of rules, found {}", kind_of(other)),
                    ),
                }
            }
        }
    }

    // Pass 3: rules.
    let mut rules = Vec::new();
    let mut names: HashMap<String, String> = HashMap::new();
    for (file, seq) in rule_seqs {
        for (idx, v) in seq.iter().enumerate() {
            let mut d = Decoder {
                file,
                stage: None,
                diag: &mut diag,
                lists: &mut lists,
            };
            let path = KeyPath::root().key("rules").index(idx);
            let origin = format!("{} rules[{idx}]", files[file].path.display());
            if let Some(rule) = read_rule(&mut d, v, &path, origin, &mut names) {
                rules.push(rule);
            }
        }
    }

    let errors = diag.finish(&files);
    if !errors.is_empty() {
        return Err(LoadErrors(errors));
    }

    let mut watched: Vec<PathBuf> = files.iter().map(|f| f.path.clone()).collect();
    watched.extend(lists.files.iter().map(|(p, _)| p.clone()));
    let hash = content_hash(&files, &lists.files, dir);
    Ok(RuleSet::from_parts(rules, hash, watched))
}

fn content_hash(files: &[SourceFile], lists: &[(PathBuf, Vec<u8>)], dir: &Path) -> String {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut add = |kind: &[u8], path: &Path, data: &[u8]| {
        let rel = path.strip_prefix(dir).unwrap_or(path);
        ctx.update(kind);
        ctx.update(rel.to_string_lossy().as_bytes());
        ctx.update(&[0]);
        ctx.update(&(data.len() as u64).to_be_bytes());
        ctx.update(data);
    };
    for f in files {
        add(b"R", &f.path, f.text.as_bytes());
    }
    for (p, data) in lists {
        add(b"L", p, data);
    }
    ctx.finish()
        .as_ref()
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn read_lists(d: &mut Decoder<'_>, dir: &Path, v: &Value, path: &KeyPath) {
    let Value::Mapping(m) = v else {
        if !v.is_null() {
            d.error(
                path,
                format!("expected a mapping of lists, found {}", kind_of(v)),
            );
        }
        return;
    };
    for (k, val) in m {
        let Some(name) = k.as_str() else {
            d.error(path, format!("list names are names, found {}", kind_of(k)));
            continue;
        };
        let lpath = path.key(name);
        if !valid_name(name) {
            d.error_at_key(
                &lpath,
                format!("invalid list name {name:?}: use letters, digits, '-', '_' and '.'"),
            );
            continue;
        }
        if d.lists.defs.contains_key(name) {
            d.error_at_key(&lpath, format!("duplicate list `{name}`"));
            continue;
        }
        let items = match val {
            Value::Sequence(_) | Value::String(_) => one_or_many(val, &lpath),
            Value::Null => Vec::new(),
            other => {
                d.error(
                    &lpath,
                    format!("expected a list of items, found {}", kind_of(other)),
                );
                continue;
            }
        };
        let mut def = ListDef::default();
        for (ipath, item) in items {
            let text = match item {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                other => {
                    d.error(
                        &ipath,
                        format!("expected a string item, found {}", kind_of(other)),
                    );
                    continue;
                }
            };
            if let Some(rel) = text.strip_prefix("file:") {
                read_list_file(d, dir, rel.trim(), &ipath, &mut def);
            } else {
                def.items.push(ListItem {
                    text,
                    origin: Origin::Yaml {
                        file: d.file,
                        path: ipath,
                    },
                });
            }
        }
        d.lists.defs.insert(name.to_owned(), def);
    }
}

/// Reads a `file:` include: one item per line; blank lines and `#` comments (a whole
/// line, or after whitespace) are skipped.
fn read_list_file(d: &mut Decoder<'_>, dir: &Path, rel: &str, ipath: &KeyPath, def: &mut ListDef) {
    let path = dir.join(rel);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) => {
            d.error(
                ipath,
                format!(
                    "cannot read list file {:?}: {e}",
                    path.display().to_string()
                ),
            );
            return;
        }
    };
    let text = match std::str::from_utf8(&bytes) {
        Ok(t) => t.to_owned(),
        Err(e) => {
            d.error(
                ipath,
                format!(
                    "list file {:?} is not UTF-8: {e}",
                    path.display().to_string()
                ),
            );
            return;
        }
    };
    for (n, line) in text.lines().enumerate() {
        let content = strip_comment(line);
        let item = content.trim();
        if item.is_empty() {
            continue;
        }
        let column = content.len() - content.trim_start().len() + 1;
        def.items.push(ListItem {
            text: item.to_owned(),
            origin: Origin::Text {
                file: path.clone(),
                line: n + 1,
                column,
            },
        });
    }
    if !d.lists.files.iter().any(|(p, _)| p == &path) {
        d.lists.files.push((path, bytes));
    }
}

fn strip_comment(line: &str) -> &str {
    if line.trim_start().starts_with('#') {
        return "";
    }
    let b = line.as_bytes();
    for i in 1..b.len() {
        if b[i] == b'#' && (b[i - 1] == b' ' || b[i - 1] == b'\t') {
            return &line[..i];
        }
    }
    line
}

fn read_rule(
    d: &mut Decoder<'_>,
    v: &Value,
    path: &KeyPath,
    origin: String,
    names: &mut HashMap<String, String>,
) -> Option<Rule> {
    let entries = d.mapping(
        v,
        path,
        &["name", "stage", "if", "then", "mode", "description"],
    );
    let entries = entries?;
    let get = |k: &str| entries.iter().find(|(n, _)| *n == k).map(|(_, v)| *v);

    let mut ok = true;
    let name = match get("name") {
        None => {
            d.error(path, "missing field `name`");
            ok = false;
            None
        }
        Some(nv) => {
            let np = path.key("name");
            match d.string(nv, &np) {
                Some(n) if !valid_name(n) => {
                    d.error(
                        &np,
                        format!("invalid rule name {n:?}: use letters, digits, '-', '_' and '.'"),
                    );
                    ok = false;
                    None
                }
                Some(n) => {
                    if let Some(first) = names.get(n) {
                        d.error(
                            &np,
                            format!("duplicate rule name `{n}` (first defined in {first})"),
                        );
                        ok = false;
                    } else {
                        names.insert(n.to_owned(), origin.clone());
                    }
                    Some(n.to_owned())
                }
                None => {
                    ok = false;
                    None
                }
            }
        }
    };
    let stage = match get("stage") {
        None => {
            d.error(path, "missing field `stage`");
            None
        }
        Some(sv) => {
            let sp = path.key("stage");
            match sv
                .as_str()
                .and_then(|s| Stage::ALL.into_iter().find(|st| st.as_str() == s))
            {
                Some(st) => Some(st),
                None => {
                    d.error(
                        &sp,
                        format!(
                            "unknown stage {}, expected one of connect, helo, mail, rcpt, data",
                            describe(sv)
                        ),
                    );
                    None
                }
            }
        }
    };
    ok &= stage.is_some();
    d.stage = stage;
    let mode = match get("mode") {
        None => Some(Mode::Enforce),
        Some(mv) => match mv.as_str() {
            Some("enforce") => Some(Mode::Enforce),
            Some("monitor") => Some(Mode::Monitor),
            _ => {
                d.error(
                    &path.key("mode"),
                    format!(
                        "unknown mode {}, expected `enforce` or `monitor`",
                        describe(mv)
                    ),
                );
                None
            }
        },
    };
    if let Some(dv) = get("description") {
        ok &= d.string(dv, &path.key("description")).is_some();
    }
    let cond = match get("if") {
        None => Some(Box::new(Always) as Box<dyn conditions::Condition>),
        Some(iv) => conditions::parse_if(d, iv, &path.key("if")),
    };
    let action = match get("then") {
        None => {
            d.error(path, "missing field `then`");
            None
        }
        Some(tv) => actions::parse(d, tv, &path.key("then")),
    };
    if !ok {
        return None;
    }
    Some(Rule {
        name: name?.into(),
        stage: stage?,
        cond: cond?,
        action: action?,
        mode: mode?,
        origin,
    })
}
