//! A YAML tree that remembers where each node sits in the source text, in byte offsets.
//!
//! The editor splices text by byte range, so it needs exact positions; `saphyr-parser` gives
//! character markers per event, and a few of its end markers run past the node (quoted scalars
//! include trailing blanks, block collections end at the next token). This module turns the
//! event stream into nodes whose `end` is the byte just past the node's last own character.

use std::collections::{HashMap, HashSet};

use saphyr_parser::{Event, Parser, ScalarStyle, ScanError, Span};

/// Where parsing failed, 1-based line and column, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct YamlError {
    pub line: usize,
    pub column: usize,
    pub message: String,
}

#[derive(Debug, Clone)]
pub(crate) struct Node {
    pub kind: NodeKind,
    /// Byte offset of the node's first character, properties (`&anchor`, `!tag`) included.
    pub start: usize,
    /// Byte offset just past the node's last character; for block scalars, the start of the
    /// next token (their exact end is never needed: the editor refuses to edit them).
    pub end: usize,
    /// The anchor id this node defines, if any.
    pub anchor: Option<usize>,
}

#[derive(Debug, Clone)]
pub(crate) enum NodeKind {
    Scalar { value: String, style: ScalarStyle },
    Sequence { items: Vec<Node> },
    Mapping { entries: Vec<Entry>, flow: bool },
    Alias { anchor: usize },
}

#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub key: Node,
    pub value: Node,
}

impl Node {
    pub fn as_scalar(&self) -> Option<&str> {
        match &self.kind {
            NodeKind::Scalar { value, .. } => Some(value),
            _ => None,
        }
    }

    /// A plain empty scalar, `~` or `null`: what `key:` with nothing after it parses to.
    pub fn is_null(&self) -> bool {
        matches!(&self.kind, NodeKind::Scalar { value, style: ScalarStyle::Plain }
            if value.is_empty() || value == "~" || value.eq_ignore_ascii_case("null"))
    }

    pub fn entries(&self) -> Option<&[Entry]> {
        match &self.kind {
            NodeKind::Mapping { entries, .. } => Some(entries),
            _ => None,
        }
    }

    /// Every anchor id defined in this subtree.
    pub fn anchors_defined(&self, into: &mut Vec<usize>) {
        into.extend(self.anchor);
        match &self.kind {
            NodeKind::Sequence { items } => items.iter().for_each(|n| n.anchors_defined(into)),
            NodeKind::Mapping { entries, .. } => entries.iter().for_each(|e| {
                e.key.anchors_defined(into);
                e.value.anchors_defined(into);
            }),
            NodeKind::Scalar { .. } | NodeKind::Alias { .. } => {}
        }
    }
}

/// One parsed YAML document and the text it came from.
#[derive(Debug, Clone)]
pub(crate) struct YamlDocument {
    pub root: Option<Node>,
    anchors: HashMap<usize, Node>,
    anchor_names: HashMap<usize, String>,
    aliased: HashSet<usize>,
    line_starts: Vec<usize>,
}

impl YamlDocument {
    pub fn parse(text: &str) -> Result<Self, YamlError> {
        let mut builder = Builder::new(text);
        let root = builder.document()?;
        let line_starts = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(at, _)| at + 1))
            .collect();
        Ok(Self {
            root,
            anchors: builder.anchors,
            anchor_names: builder.anchor_names,
            aliased: builder.aliased,
            line_starts,
        })
    }

    /// Follows an alias to the node its anchor names.
    pub fn resolve<'a>(&'a self, node: &'a Node) -> &'a Node {
        match node.kind {
            NodeKind::Alias { anchor } => self.anchors.get(&anchor).unwrap_or(node),
            _ => node,
        }
    }

    pub fn is_aliased(&self, anchor: usize) -> bool {
        self.aliased.contains(&anchor)
    }

    pub fn anchor_name(&self, anchor: usize) -> &str {
        self.anchor_names
            .get(&anchor)
            .map(String::as_str)
            .unwrap_or("?")
    }

    /// 1-based line of a byte offset.
    pub fn line_of(&self, offset: usize) -> usize {
        self.line_starts.partition_point(|&start| start <= offset)
    }

    /// Byte offset where the line holding `offset` starts.
    pub fn line_start(&self, offset: usize) -> usize {
        self.line_starts[self.line_of(offset) - 1]
    }

    /// Byte offset where a 1-based line starts.
    pub fn start_of_line(&self, line: usize) -> usize {
        self.line_starts[line - 1]
    }
}

struct Builder<'input> {
    text: &'input str,
    parser: Parser<'input, saphyr_parser::StrInput<'input>>,
    /// Character index to byte offset; empty when the text is ASCII (they are equal).
    char_to_byte: Vec<usize>,
    anchors: HashMap<usize, Node>,
    anchor_names: HashMap<usize, String>,
    aliased: HashSet<usize>,
}

impl<'input> Builder<'input> {
    fn new(text: &'input str) -> Self {
        let char_to_byte = if text.is_ascii() {
            Vec::new()
        } else {
            text.char_indices()
                .map(|(at, _)| at)
                .chain(std::iter::once(text.len()))
                .collect()
        };
        Self {
            text,
            parser: Parser::new_from_str(text),
            char_to_byte,
            anchors: HashMap::new(),
            anchor_names: HashMap::new(),
            aliased: HashSet::new(),
        }
    }

    fn byte(&self, char_index: usize) -> usize {
        if self.char_to_byte.is_empty() {
            char_index.min(self.text.len())
        } else {
            self.char_to_byte
                .get(char_index)
                .copied()
                .unwrap_or(self.text.len())
        }
    }

    fn next(&mut self) -> Result<(Event<'input>, Span), YamlError> {
        match self.parser.next_event() {
            Some(Ok(event)) => Ok(event),
            Some(Err(error)) => Err(scan_error(self.text, &error)),
            None => Err(YamlError {
                line: 1,
                column: 1,
                message: "unexpected end of the YAML stream".to_owned(),
            }),
        }
    }

    fn error_at(&self, offset: usize, message: String) -> YamlError {
        let before = &self.text[..offset];
        let line = before.matches('\n').count() + 1;
        let column = before[before.rfind('\n').map_or(0, |at| at + 1)..]
            .chars()
            .count()
            + 1;
        YamlError {
            line,
            column,
            message,
        }
    }

    fn document(&mut self) -> Result<Option<Node>, YamlError> {
        let mut root = None;
        loop {
            let (event, span) = self.next()?;
            match event {
                Event::StreamStart | Event::DocumentEnd | Event::Nothing => {}
                Event::StreamEnd => return Ok(root),
                Event::DocumentStart(_) => {
                    if root.is_some() {
                        return Err(self.error_at(
                            self.byte(span.start.index()),
                            "a second YAML document starts here; a Compose file holds one document"
                                .to_owned(),
                        ));
                    }
                    let (event, span) = self.next()?;
                    root = Some(self.node(event, span)?);
                }
                other => {
                    return Err(self.error_at(
                        self.byte(span.start.index()),
                        format!("unexpected YAML event {other:?}"),
                    ));
                }
            }
        }
    }

    fn node(&mut self, event: Event<'input>, span: Span) -> Result<Node, YamlError> {
        let start = self.byte(span.start.index());
        let (kind, end, anchor) = match event {
            Event::Scalar(value, style, anchor, _tag) => {
                let end = self.scalar_end(start, self.byte(span.end.index()), style);
                let kind = NodeKind::Scalar {
                    value: value.into_owned(),
                    style,
                };
                (kind, end, anchor)
            }
            Event::Alias(anchor) => {
                if !self.anchors.contains_key(&anchor) {
                    return Err(self.error_at(start, "alias to an unknown anchor".to_owned()));
                }
                self.aliased.insert(anchor);
                (NodeKind::Alias { anchor }, self.byte(span.end.index()), 0)
            }
            Event::SequenceStart(anchor, _tag) => {
                let flow = starts_flow_collection(self.text, start);
                let mut items = Vec::new();
                let end = loop {
                    let (event, span) = self.next()?;
                    if matches!(event, Event::SequenceEnd) {
                        break self.collection_end(flow, &span, items.last().map(|n: &Node| n.end));
                    }
                    items.push(self.node(event, span)?);
                };
                (NodeKind::Sequence { items }, end.max(start), anchor)
            }
            Event::MappingStart(anchor, _tag) => {
                let flow = starts_flow_collection(self.text, start);
                let mut entries: Vec<Entry> = Vec::new();
                let mut seen = HashSet::new();
                let end = loop {
                    let (event, span) = self.next()?;
                    if matches!(event, Event::MappingEnd) {
                        break self.collection_end(
                            flow,
                            &span,
                            entries.last().map(|e| e.value.end.max(e.key.end)),
                        );
                    }
                    let key = self.node(event, span)?;
                    if let Some(name) = key.as_scalar()
                        && name != "<<"
                        && !seen.insert(name.to_owned())
                    {
                        return Err(self.error_at(
                            key.start,
                            format!(
                                "duplicate key `{name}`: YAML forbids it and Compose v2 rejects \
                                 it; keep one of them"
                            ),
                        ));
                    }
                    let (event, span) = self.next()?;
                    let value = self.node(event, span)?;
                    entries.push(Entry { key, value });
                };
                (NodeKind::Mapping { entries, flow }, end.max(start), anchor)
            }
            other => {
                return Err(self.error_at(start, format!("unexpected YAML event {other:?}")));
            }
        };
        let node = Node {
            kind,
            start,
            end,
            anchor: (anchor != 0).then_some(anchor),
        };
        if let Some(anchor) = node.anchor {
            self.anchor_names
                .insert(anchor, anchor_name_at(self.text, start));
            self.anchors.insert(anchor, node.clone());
        }
        Ok(node)
    }

    fn collection_end(&self, flow: bool, end_span: &Span, last_child_end: Option<usize>) -> usize {
        if flow {
            // The end event starts at the closing bracket.
            self.byte(end_span.start.index()) + 1
        } else {
            last_child_end.unwrap_or_else(|| self.byte(end_span.start.index()))
        }
    }

    /// The parser's end marker for quoted scalars includes trailing blanks and comments; find
    /// the closing quote instead.
    fn scalar_end(&self, start: usize, marker_end: usize, style: ScalarStyle) -> usize {
        let quote = match style {
            ScalarStyle::SingleQuoted => b'\'',
            ScalarStyle::DoubleQuoted => b'"',
            _ => return marker_end,
        };
        let bytes = self.text.as_bytes();
        let Some(open) = bytes[start..].iter().position(|&b| b == quote) else {
            return marker_end;
        };
        let mut at = start + open + 1;
        while at < bytes.len() {
            match bytes[at] {
                b'\\' if quote == b'"' => at += 2,
                b'\'' if quote == b'\'' && bytes.get(at + 1) == Some(&b'\'') => at += 2,
                b if b == quote => return at + 1,
                _ => at += 1,
            }
        }
        marker_end
    }
}

/// Whether the collection starting at `start` (possibly with `&anchor`/`!tag` properties) is a
/// flow collection, `[...]` or `{...}`.
fn starts_flow_collection(text: &str, start: usize) -> bool {
    let mut rest = &text[start..];
    loop {
        rest = rest.trim_start();
        if rest.starts_with('&') || rest.starts_with('!') {
            let token_end = rest.find(char::is_whitespace).unwrap_or(rest.len());
            rest = &rest[token_end..];
        } else if rest.starts_with('#') {
            rest = &rest[rest.find('\n').unwrap_or(rest.len())..];
        } else {
            return rest.starts_with('[') || rest.starts_with('{');
        }
    }
}

fn anchor_name_at(text: &str, start: usize) -> String {
    let rest = &text[start..];
    rest.strip_prefix('&')
        .map(|name| {
            name.chars()
                .take_while(|c| !c.is_whitespace() && !",[]{}".contains(*c))
                .collect()
        })
        .unwrap_or_default()
}

fn scan_error(text: &str, error: &ScanError) -> YamlError {
    let marker = error.marker();
    let mut message = error.info().to_owned();
    let line_text = text
        .lines()
        .nth(marker.line().saturating_sub(1))
        .unwrap_or("");
    if message.contains("tab") || line_text.starts_with([' ', '\t']) && line_text.contains('\t') {
        message.push_str("; YAML does not allow tabs in indentation: indent this line with spaces");
    }
    YamlError {
        line: marker.line(),
        column: marker.col() + 1,
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slice<'a>(text: &'a str, node: &Node) -> &'a str {
        &text[node.start..node.end]
    }

    fn value<'a>(mapping: &'a Node, key: &str) -> &'a Node {
        &mapping
            .entries()
            .unwrap()
            .iter()
            .find(|e| e.key.as_scalar() == Some(key))
            .unwrap()
            .value
    }

    #[test]
    fn spans_cover_exactly_the_node_text() {
        let text = "a: \"q\\\"x\"   # c\nb: 'it''s' \nc: [x, \"y\" ,z]  # t\nd:\n  - one # c\n  # c2\n  - two\ne: {k: v}\nf: plain words  \n";
        let doc = YamlDocument::parse(text).unwrap();
        let root = doc.root.as_ref().unwrap();
        assert_eq!(slice(text, value(root, "a")), "\"q\\\"x\"");
        assert_eq!(slice(text, value(root, "b")), "'it''s'");
        assert_eq!(slice(text, value(root, "c")), "[x, \"y\" ,z]");
        assert_eq!(slice(text, value(root, "d")), "- one # c\n  # c2\n  - two");
        assert_eq!(slice(text, value(root, "e")), "{k: v}");
        assert_eq!(slice(text, value(root, "f")), "plain words");
    }

    #[test]
    fn byte_offsets_survive_multibyte_characters() {
        let text = "é: \"ü\"\nnext: [ä, b]\n";
        let doc = YamlDocument::parse(text).unwrap();
        let root = doc.root.as_ref().unwrap();
        assert_eq!(slice(text, value(root, "é")), "\"ü\"");
        assert_eq!(slice(text, value(root, "next")), "[ä, b]");
        assert_eq!(doc.line_of(value(root, "next").start), 2);
    }

    #[test]
    fn aliases_resolve_to_their_anchor() {
        let text = "x: &caps [A, B]\ny: *caps\n";
        let doc = YamlDocument::parse(text).unwrap();
        let root = doc.root.as_ref().unwrap();
        let alias = value(root, "y");
        assert!(matches!(alias.kind, NodeKind::Alias { .. }));
        let resolved = doc.resolve(alias);
        assert_eq!(slice(text, resolved), "&caps [A, B]");
        let anchor = resolved.anchor.unwrap();
        assert!(doc.is_aliased(anchor));
        assert_eq!(doc.anchor_name(anchor), "caps");
    }

    #[test]
    fn tabs_in_indentation_get_a_clear_message() {
        let error = YamlDocument::parse("services:\n  web:\n\timage: x\n").unwrap_err();
        assert_eq!(error.line, 3);
        assert!(
            error.message.contains("indent this line with spaces"),
            "{error:?}"
        );
    }

    #[test]
    fn duplicate_keys_and_second_documents_are_refused() {
        let error = YamlDocument::parse("a: 1\nb: 2\na: 3\n").unwrap_err();
        assert_eq!((error.line, error.column), (3, 1));
        assert!(error.message.contains("duplicate key `a`"));
        let error = YamlDocument::parse("a: 1\n---\nb: 2\n").unwrap_err();
        assert!(error.message.contains("second YAML document"), "{error:?}");
        assert!(YamlDocument::parse("<<: {a: 1}\n<<: {b: 2}\n").is_ok());
    }

    #[test]
    fn empty_text_has_no_root() {
        assert!(YamlDocument::parse("").unwrap().root.is_none());
        assert!(
            YamlDocument::parse("# only a comment\n")
                .unwrap()
                .root
                .is_none()
        );
    }
}
