//! The span editor: computes the text edits that give one service `cap_drop: [ALL]`, its
//! minimal `cap_add` and (optionally) no `privileged: true`, touching nothing else.
//!
//! Rules (docs/compose.md explains them for users):
//! - A key the service sets itself is replaced in place: from the start of the key's line to
//!   the end of the line where its value ends. Comments inside that range go with it; comment
//!   lines before the key or after the value stay.
//! - A key the service does not set is inserted with the service's key indentation: `cap_add`
//!   right after an own `cap_drop`, `cap_drop` right before an own `cap_add`, otherwise at the
//!   top of the service's mapping (after comment lines that open it, which describe the
//!   service). The top is always a safe place; after the last key is not (block scalars).
//! - A value that comes from a `<<:` merge key is never edited at its source (other services
//!   share it): the service gets its own key, which wins over merged ones.
//! - A key that already has the wanted value is left byte for byte, whatever its style.

use super::{
    error::ComposeError,
    file::{CAP_ADD, CAP_DROP, ComposeFile, PRIVILEGED, own_entry},
    settings::CapSet,
    yaml::{Entry, Node, NodeKind},
};
use crate::capability::Capability;

/// Longest reason kept in a comment, in characters; longer ones are cut with "...".
const MAX_REASON_CHARS: usize = 72;

/// Replace `start..end` of the text with `text`; `start == end` inserts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TextEdit {
    pub start: usize,
    pub end: usize,
    /// Orders insertions at the same offset.
    pub rank: u8,
    pub text: String,
}

/// What one file should say about one service.
#[derive(Debug, Clone)]
pub(crate) struct ServiceGoal<'a> {
    /// The minimal `cap_add`, in writing order, with reasons.
    pub needed: &'a [(Capability, &'a str)],
    /// This file holds the service's capability keys: write them even where it sets none.
    pub is_home: bool,
    /// Remove `privileged: true` (or override an inherited one with `false`).
    pub drop_privileged: bool,
}

impl ServiceGoal<'_> {
    fn wanted_cap_add(&self) -> CapSet {
        CapSet::of(self.needed.iter().map(|(cap, _)| *cap))
    }
}

/// The byte range of an own key: whole lines, from the key's line to the value's last line.
#[derive(Debug, Clone, Copy)]
struct KeyRegion {
    start: usize,
    end: usize,
    /// Why the key cannot be rewritten, if it cannot (checked only when it must be).
    locked: Option<&'static str>,
    line: usize,
    anchor: Option<usize>,
}

struct ServiceLayout<'a> {
    file: &'a ComposeFile,
    service: &'a str,
    mapping: &'a Node,
    indent: String,
    eol: &'static str,
    body_start: usize,
}

pub(crate) fn service_edits(
    file: &ComposeFile,
    service: &str,
    goal: &ServiceGoal<'_>,
) -> Result<Vec<TextEdit>, ComposeError> {
    // Decide from the values first: a file that needs no edit is fine in any form (override
    // files often write a service as a flow mapping).
    let current = file.partial_settings(service)?;
    let wanted = goal.wanted_cap_add();
    let edit_drop = current.cap_drop.as_ref() != Some(&CapSet::only_all())
        && (current.cap_drop.is_some() || goal.is_home);
    let edit_add = current.cap_add.clone().unwrap_or_default() != wanted
        && (current.cap_add.is_some() || goal.is_home);
    let edit_privileged = goal.drop_privileged && current.privileged == Some(true);
    if !(edit_drop || edit_add || edit_privileged) {
        return Ok(Vec::new());
    }

    let layout = ServiceLayout::new(file, service)?;
    let own_drop = layout.own_region(CAP_DROP);
    let own_add = layout.own_region(CAP_ADD);
    let own_privileged = layout.own_region(PRIVILEGED);
    let mut edits = Vec::new();

    // cap_drop: exactly [ALL].
    if edit_drop {
        let text = layout.line(&format!("{CAP_DROP}: [ALL]"));
        edits.push(match own_drop {
            Some(region) => layout.replace(region, CAP_DROP, text)?,
            None => layout.insert(own_add.map_or(layout.body_start, |r| r.start), 1, text),
        });
    }

    // cap_add: exactly the needed set; absent when it is empty.
    if edit_add {
        let inherits_some = file
            .lookup_merged(layout.mapping, CAP_ADD, 0)
            .map(|value| file.cap_list(service, CAP_ADD, value))
            .transpose()?
            .is_some_and(|set| !set.is_empty());
        let text = if !wanted.is_empty() {
            Some(layout.cap_add_block(goal.needed))
        } else if inherits_some {
            // An own empty list is the only way to cancel a merged-in one.
            Some(layout.line(&format!("{CAP_ADD}: []")))
        } else {
            None
        };
        match (own_add, text) {
            (Some(region), Some(text)) => edits.push(layout.replace(region, CAP_ADD, text)?),
            (Some(region), None) => edits.push(layout.replace(region, CAP_ADD, String::new())?),
            (None, Some(text)) => {
                edits.push(layout.insert(own_drop.map_or(layout.body_start, |r| r.end), 2, text))
            }
            (None, None) => {}
        }
    }

    // privileged: true grants everything, whatever the lists say.
    if edit_privileged {
        let inherits_true = file
            .lookup_merged(layout.mapping, PRIVILEGED, 0)
            .map(|value| file.privileged_flag(service, value))
            .transpose()?
            == Some(true);
        let text = layout.line(&format!("{PRIVILEGED}: false"));
        edits.push(match (own_privileged, inherits_true) {
            (Some(region), false) => layout.replace(region, PRIVILEGED, String::new())?,
            (Some(region), true) => layout.replace(region, PRIVILEGED, text)?,
            (None, _) => {
                let first_own = [own_drop, own_add]
                    .into_iter()
                    .flatten()
                    .map(|r| r.start)
                    .min();
                layout.insert(first_own.unwrap_or(layout.body_start), 0, text)
            }
        });
    }
    Ok(edits)
}

impl<'a> ServiceLayout<'a> {
    fn new(file: &'a ComposeFile, service: &'a str) -> Result<Self, ComposeError> {
        let unsupported = |at: usize, message: &str| ComposeError::UnsupportedForm {
            path: file.path.clone(),
            line: file.yaml.line_of(at),
            service: service.to_owned(),
            message: message.to_owned(),
        };
        let Some(entry) = file.service_entry(service) else {
            return Err(ComposeError::UnknownService {
                name: service.to_owned(),
                available: file.service_names(),
            });
        };
        if let Some(services) = file.services_mapping()
            && matches!(services.kind, NodeKind::Mapping { flow: true, .. })
        {
            return Err(unsupported(
                services.start,
                "`services` is written as a flow mapping `{...}`; write it in block style",
            ));
        }
        let mapping = &entry.value;
        let first_key = match &mapping.kind {
            NodeKind::Alias { .. } => {
                return Err(unsupported(
                    mapping.start,
                    "the service is an alias of another node (`*name`); give it its own \
                     mapping, e.g. `<<: *name` plus its own keys",
                ));
            }
            NodeKind::Mapping { flow: true, .. } => {
                return Err(unsupported(
                    mapping.start,
                    "the service is written as a flow mapping `{...}`; write it in block style",
                ));
            }
            NodeKind::Mapping { entries, .. } => &entries[0].key,
            _ => {
                return Err(unsupported(
                    mapping.start,
                    "the service has no settings mapping (Compose needs at least `image:` or \
                     `build:`)",
                ));
            }
        };
        let text = file.text.as_str();
        let key_line_start = file.yaml.line_start(first_key.start);
        let indent = &text[key_line_start..first_key.start];
        if !indent.bytes().all(|b| b == b' ') {
            return Err(unsupported(
                first_key.start,
                "the service's first key does not start its own line",
            ));
        }
        let eol = if text.contains("\r\n") { "\r\n" } else { "\n" };

        // Insert after the lines that open the mapping (the service key, anchors or tags on
        // their own line, and comments right before the first key), never above them.
        let header_line = if mapping.start < first_key.start {
            file.yaml.line_of(mapping.start)
        } else {
            file.yaml.line_of(entry.key.start)
        };
        let mut body_line = file.yaml.line_of(first_key.start);
        while body_line - 1 > header_line {
            let previous = line_text(file, body_line - 1).trim();
            if previous.is_empty() || previous.starts_with('#') {
                body_line -= 1;
            } else {
                break;
            }
        }
        let body_start = file.yaml.start_of_line(body_line);
        Ok(Self {
            file,
            service,
            mapping,
            indent: indent.to_owned(),
            eol,
            body_start,
        })
    }

    fn own_region(&self, key: &str) -> Option<KeyRegion> {
        let entry = own_entry(self.mapping, key)?;
        let file = self.file;
        let start = file.yaml.line_start(entry.key.start);
        let mut anchors = Vec::new();
        entry.value.anchors_defined(&mut anchors);
        let anchor = anchors.into_iter().find(|a| file.yaml.is_aliased(*a));
        let locked = if !file.text[start..entry.key.start].bytes().all(|b| b == b' ') {
            Some("does not start its own line")
        } else if anchor.is_some() {
            Some("defines an anchor that other parts of the file use")
        } else {
            None
        };
        let last = entry_end(entry).saturating_sub(1).max(entry.key.start);
        Some(KeyRegion {
            start,
            end: line_end(&file.text, last),
            locked,
            line: file.yaml.line_of(entry.key.start),
            anchor,
        })
    }

    /// Rewrites an own key's region, unless the key is locked.
    fn replace(
        &self,
        region: KeyRegion,
        key: &str,
        text: String,
    ) -> Result<TextEdit, ComposeError> {
        if let Some(reason) = region.locked {
            let message = match region.anchor {
                Some(anchor) => format!(
                    "`{key}` defines the anchor `&{}`, which other parts of the file use; move \
                     the anchor elsewhere (e.g. an `x-` extension field) so editing `{key}` \
                     cannot change them",
                    self.file.yaml.anchor_name(anchor)
                ),
                None => format!("`{key}` {reason}"),
            };
            return Err(ComposeError::UnsupportedForm {
                path: self.file.path.clone(),
                line: region.line,
                service: self.service.to_owned(),
                message,
            });
        }
        Ok(TextEdit {
            start: region.start,
            end: region.end,
            rank: 0,
            text,
        })
    }

    fn line(&self, content: &str) -> String {
        format!("{}{content}{}", self.indent, self.eol)
    }

    fn insert(&self, at: usize, rank: u8, text: String) -> TextEdit {
        TextEdit {
            start: at,
            end: at,
            rank,
            text,
        }
    }

    fn cap_add_block(&self, needed: &[(Capability, &str)]) -> String {
        let width = needed
            .iter()
            .map(|(cap, _)| cap.short_name().len())
            .max()
            .unwrap_or(0);
        let mut block = self.line(&format!("{CAP_ADD}:"));
        for (cap, reason) in needed {
            let reason = one_line_reason(reason);
            let item = if reason.is_empty() {
                format!("  - {}", cap.short_name())
            } else {
                format!("  - {:<width$}  # {reason}", cap.short_name())
            };
            block.push_str(&self.line(&item));
        }
        block
    }
}

fn entry_end(entry: &Entry) -> usize {
    entry.key.end.max(entry.value.end)
}

/// Offset just past the newline ending the line that holds `offset` (or the text's end).
fn line_end(text: &str, offset: usize) -> usize {
    text[offset..]
        .find('\n')
        .map_or(text.len(), |at| offset + at + 1)
}

fn line_text(file: &ComposeFile, line: usize) -> &str {
    let start = file.yaml.start_of_line(line);
    &file.text[start..line_end(&file.text, start)]
}

/// A reason as one short comment: control characters become spaces, runs of blanks one, and
/// it is cut at [`MAX_REASON_CHARS`].
pub(crate) fn one_line_reason(reason: &str) -> String {
    let words: Vec<&str> = reason
        .split(|c: char| c.is_whitespace() || c.is_control())
        .filter(|w| !w.is_empty())
        .collect();
    let joined = words.join(" ");
    if joined.chars().count() <= MAX_REASON_CHARS {
        return joined;
    }
    let cut: String = joined.chars().take(MAX_REASON_CHARS - 3).collect();
    format!("{}...", cut.trim_end())
}

/// Edits that overlap: a bug in the edit planner, never the user's doing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct OverlappingEdits(pub TextEdit);

/// Applies non-overlapping edits. A file whose last line has no newline keeps it that way.
pub(crate) fn splice(text: &str, edits: &[TextEdit]) -> Result<String, OverlappingEdits> {
    let mut edits: Vec<&TextEdit> = edits.iter().collect();
    // Insertions before a replacement that starts at the same offset, then by rank.
    edits.sort_by_key(|edit| (edit.start, edit.end > edit.start, edit.rank));
    let eol = if text.contains("\r\n") { "\r\n" } else { "\n" };
    let open_last_line = !text.is_empty() && !text.ends_with('\n');
    let mut out = String::with_capacity(text.len() + 256);
    let mut copied = 0;
    for edit in edits {
        if edit.start < copied {
            return Err(OverlappingEdits(edit.clone()));
        }
        out.push_str(&text[copied..edit.start]);
        let mut replacement = edit.text.as_str();
        let at_open_end = open_last_line && edit.end == text.len();
        if at_open_end {
            replacement = replacement.strip_suffix(eol).unwrap_or(replacement);
            if edit.start == text.len() && !replacement.is_empty() {
                out.push_str(eol);
            }
        }
        out.push_str(replacement);
        copied = edit.end;
    }
    out.push_str(&text[copied..]);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use Capability::*;

    fn edit(
        text: &str,
        service: &str,
        needed: &[(Capability, &str)],
        drop_privileged: bool,
    ) -> String {
        let file = ComposeFile::parse(PathBuf::from("compose.yml"), text.to_owned(), None).unwrap();
        let goal = ServiceGoal {
            needed,
            is_home: true,
            drop_privileged,
        };
        splice(text, &service_edits(&file, service, &goal).unwrap()).unwrap()
    }

    fn edit_error(text: &str, service: &str) -> String {
        let file = ComposeFile::parse(PathBuf::from("compose.yml"), text.to_owned(), None).unwrap();
        let goal = ServiceGoal {
            needed: &[(NetAdmin, "")],
            is_home: true,
            drop_privileged: false,
        };
        service_edits(&file, service, &goal)
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn inserts_both_keys_at_the_top_of_a_service_without_them() {
        let text = "services:\n  web:\n    # the front end\n    image: nginx # pinned\n    ports:\n      - \"80:80\"\n  db:\n    image: postgres\n";
        let out = edit(
            text,
            "web",
            &[(NetBindService, "bind port 80 (nginx)")],
            false,
        );
        assert_eq!(
            out,
            "services:\n  web:\n    cap_drop: [ALL]\n    cap_add:\n      - NET_BIND_SERVICE  # bind port 80 (nginx)\n    # the front end\n    image: nginx # pinned\n    ports:\n      - \"80:80\"\n  db:\n    image: postgres\n"
        );
    }

    #[test]
    fn replaces_a_block_list_with_its_comments() {
        let text = "services:\n  web:\n    image: x\n    cap_add:\n      # for the vpn\n      - NET_ADMIN  # old\n      - SYS_TIME\n    # keep me\n    environment: {A: b}\n";
        let out = edit(text, "web", &[(Kill, "signal workers"), (Chown, "")], false);
        assert_eq!(
            out,
            "services:\n  web:\n    image: x\n    cap_drop: [ALL]\n    cap_add:\n      - KILL   # signal workers\n      - CHOWN\n    # keep me\n    environment: {A: b}\n"
        );
    }

    #[test]
    fn replaces_inline_lists_and_keeps_a_matching_drop_as_written() {
        let text = "services:\n  web:\n    cap_drop:\n    - all   # everything\n    cap_add: [net_admin, \"SYS_TIME\"]  # old\n    image: x\n";
        let out = edit(text, "web", &[(NetAdmin, "routes")], false);
        assert_eq!(
            out,
            "services:\n  web:\n    cap_drop:\n    - all   # everything\n    cap_add:\n      - NET_ADMIN  # routes\n    image: x\n"
        );
    }

    #[test]
    fn leaves_a_service_that_already_matches_byte_for_byte() {
        let text = "services:\n  web:\n    image: x\n    cap_add: [CAP_net_admin]   # vpn\n    cap_drop: [\"ALL\"]\n";
        assert_eq!(edit(text, "web", &[(NetAdmin, "routes")], false), text);
    }

    #[test]
    fn an_empty_recommendation_removes_cap_add() {
        let text = "services:\n  web:\n    image: x\n    cap_add:\n      - NET_ADMIN\n    cap_drop: [NET_RAW]\n    restart: always\n";
        assert_eq!(
            edit(text, "web", &[], false),
            "services:\n  web:\n    image: x\n    cap_drop: [ALL]\n    restart: always\n"
        );
    }

    #[test]
    fn a_new_cap_add_goes_after_an_own_cap_drop_and_a_new_drop_before_an_own_add() {
        let text = "services:\n  a:\n    image: x\n    cap_drop: [ALL]\n    restart: always\n  b:\n    image: y\n    cap_add: [KILL]\n";
        let out = edit(text, "a", &[(Kill, "")], false);
        assert_eq!(
            out,
            "services:\n  a:\n    image: x\n    cap_drop: [ALL]\n    cap_add:\n      - KILL\n    restart: always\n  b:\n    image: y\n    cap_add: [KILL]\n"
        );
        let out = edit(text, "b", &[(Kill, "")], false);
        assert!(
            out.ends_with("  b:\n    image: y\n    cap_drop: [ALL]\n    cap_add: [KILL]\n"),
            "{out}"
        );
    }

    #[test]
    fn keeps_crlf_line_endings() {
        let text = "services:\r\n  web:\r\n    image: x\r\n    cap_add: [A_B]\r\n";
        let text = text.replace("A_B", "NET_RAW");
        let out = edit(&text, "web", &[(Chown, "chown")], false);
        assert_eq!(
            out,
            "services:\r\n  web:\r\n    image: x\r\n    cap_drop: [ALL]\r\n    cap_add:\r\n      - CHOWN  # chown\r\n"
        );
    }

    #[test]
    fn a_last_line_without_newline_stays_without() {
        let text = "services:\n  web:\n    image: x\n    cap_drop: [ALL]";
        assert_eq!(
            edit(text, "web", &[(Kill, "")], false),
            "services:\n  web:\n    image: x\n    cap_drop: [ALL]\n    cap_add:\n      - KILL"
        );
        let text = "services:\n  web:\n    image: x\n    cap_drop: [ALL]\n    cap_add: [SYS_TIME]";
        assert_eq!(
            edit(text, "web", &[], false),
            "services:\n  web:\n    image: x\n    cap_drop: [ALL]\n"
        );
    }

    #[test]
    fn merged_values_are_overridden_by_own_keys_not_edited_at_the_source() {
        let text = "x-base: &base\n  image: x\n  cap_add: [NET_ADMIN]\n  privileged: true\nservices:\n  web:\n    <<: *base\n    restart: always\n";
        let out = edit(text, "web", &[], true);
        assert_eq!(
            out,
            "x-base: &base\n  image: x\n  cap_add: [NET_ADMIN]\n  privileged: true\nservices:\n  web:\n    privileged: false\n    cap_drop: [ALL]\n    cap_add: []\n    <<: *base\n    restart: always\n"
        );
    }

    #[test]
    fn privileged_is_removed_only_when_asked() {
        let text = "services:\n  web:\n    image: x\n    privileged: true\n    cap_drop: [ALL]\n";
        assert_eq!(edit(text, "web", &[], false), text);
        assert_eq!(
            edit(text, "web", &[], true),
            "services:\n  web:\n    image: x\n    cap_drop: [ALL]\n"
        );
    }

    #[test]
    fn anchored_service_mappings_insert_below_the_anchor_line() {
        let text = "services:\n  web: &web\n    image: x\n  other:\n    <<: *web\n";
        assert_eq!(
            edit(text, "web", &[], false),
            "services:\n  web: &web\n    cap_drop: [ALL]\n    image: x\n  other:\n    <<: *web\n"
        );
        let text = "services:\n  web:\n    &web\n    # c\n    image: x\n  other: *web\n";
        assert_eq!(
            edit(text, "web", &[], false),
            "services:\n  web:\n    &web\n    cap_drop: [ALL]\n    # c\n    image: x\n  other: *web\n"
        );
    }

    #[test]
    fn multi_line_flow_lists_quoted_keys_and_aliased_values_are_replaced_whole() {
        let text = "x-caps: &caps [KILL]\nservices:\n  web:\n    \"cap_add\": [NET_ADMIN,\n       SYS_TIME]   # two lines\n    cap_drop: *caps\n    image: x\n";
        assert_eq!(
            edit(text, "web", &[(Chown, "")], false),
            "x-caps: &caps [KILL]\nservices:\n  web:\n    cap_add:\n      - CHOWN\n    cap_drop: [ALL]\n    image: x\n"
        );
    }

    #[test]
    fn null_and_empty_lists_count_as_empty() {
        let text = "services:\n  web:\n    image: x\n    cap_add:\n    cap_drop: [ALL]\n";
        assert_eq!(edit(text, "web", &[], false), text);
        let text = "services:\n  web:\n    image: x\n    cap_add: []\n    cap_drop: [ALL]\n";
        assert_eq!(edit(text, "web", &[], false), text);
        let text = "services:\n  web:\n    image: x\n    cap_add: ~\n";
        assert_eq!(
            edit(text, "web", &[(Kill, "")], false),
            "services:\n  web:\n    image: x\n    cap_drop: [ALL]\n    cap_add:\n      - KILL\n"
        );
    }

    #[test]
    fn a_block_scalar_as_last_key_is_left_intact() {
        let text = "services:\n  web:\n    image: x\n    command: |+\n      run\n      # part of the command\n\n  db:\n    image: y\n";
        assert_eq!(
            edit(text, "web", &[], false),
            "services:\n  web:\n    cap_drop: [ALL]\n    image: x\n    command: |+\n      run\n      # part of the command\n\n  db:\n    image: y\n"
        );
    }

    #[test]
    fn deeper_and_shallower_indentation_is_followed() {
        let text = "services:\n    web:\n        image: x\n        cap_drop:\n        - ALL\n";
        assert_eq!(
            edit(text, "web", &[(NetRaw, "ping")], false),
            "services:\n    web:\n        image: x\n        cap_drop:\n        - ALL\n        cap_add:\n          - NET_RAW  # ping\n"
        );
        let text = "services:\n web:\n  image: x\n";
        assert_eq!(
            edit(text, "web", &[], false),
            "services:\n web:\n  cap_drop: [ALL]\n  image: x\n"
        );
    }

    #[test]
    fn a_shared_anchor_in_a_key_that_needs_no_edit_is_fine() {
        let text = "services:\n  web:\n    image: x\n    cap_drop: &drop [ALL]\n  api:\n    image: y\n    cap_drop: *drop\n";
        assert_eq!(
            edit(text, "web", &[(Kill, "")], false),
            "services:\n  web:\n    image: x\n    cap_drop: &drop [ALL]\n    cap_add:\n      - KILL\n  api:\n    image: y\n    cap_drop: *drop\n"
        );
    }

    #[test]
    fn long_reasons_are_cut_and_flattened() {
        let reason = one_line_reason("bind\nport 80\t  (nginx)");
        assert_eq!(reason, "bind port 80 (nginx)");
        let long = one_line_reason(&"word ".repeat(40));
        assert_eq!(long.chars().count(), MAX_REASON_CHARS);
        assert!(long.ends_with("..."));
    }

    #[test]
    fn a_flow_mapping_that_needs_no_edit_is_fine() {
        let text = "services:\n  web: {ports: [\"80:80\"]}\n";
        let file = ComposeFile::parse(PathBuf::from("o.yml"), text.to_owned(), None).unwrap();
        let goal = ServiceGoal {
            needed: &[(NetAdmin, "")],
            is_home: false,
            drop_privileged: true,
        };
        assert_eq!(service_edits(&file, "web", &goal).unwrap(), []);
    }

    #[test]
    fn refuses_forms_it_cannot_edit_in_place() {
        assert!(edit_error("services:\n  web: {image: x}\n", "web").contains("flow mapping"));
        assert!(edit_error("services: {web: {image: x}}\n", "web").contains("flow mapping"));
        assert!(edit_error("x: &w\n  image: x\nservices:\n  web: *w\n", "web").contains("alias"));
        assert!(edit_error("services:\n  web:\n", "web").contains("no settings mapping"));
        let error = edit_error(
            "services:\n  web:\n    image: x\n    cap_add: &caps [KILL]\n  b:\n    image: y\n    cap_add: *caps\n",
            "web",
        );
        assert!(error.contains("anchor `&caps`"), "{error}");
    }
}
