//! Property test of the Compose editor: random valid Compose files (random keys, comments,
//! block and flow lists, every capability spelling, merge keys, block scalars, CRLF) go
//! through `apply`, and
//! 1. the output parses as YAML and as Compose,
//! 2. every line outside the edited services' capability keys is byte-identical,
//! 3. each edited service resolves to exactly its recommendation, other services unchanged,
//! 4. applying again changes nothing.

use std::{collections::BTreeSet, path::Path};

use capprof::{
    capability::Capability,
    compose::{
        self, ApplyOptions, CapSet, CapSettings, ComposeProject, PrivilegedPolicy, Recommendations,
        ServiceRecommendation,
    },
};
use proptest::{prelude::*, sample::select};

const POOL: &[Capability] = &[
    Capability::NetAdmin,
    Capability::NetBindService,
    Capability::Chown,
    Capability::SysTime,
    Capability::Kill,
    Capability::SysPtrace,
    Capability::Setuid,
    Capability::DacOverride,
];
const NAMES: &[&str] = &["web", "api", "db", "cache", "worker", "proxy"];

#[derive(Debug, Clone, Copy)]
enum Spelling {
    Upper,
    Prefixed,
    Lower,
    DoubleQuoted,
    SingleQuoted,
}

#[derive(Debug, Clone)]
struct Item {
    /// `None` is `ALL` (only in `cap_drop`).
    cap: Option<Capability>,
    spelling: Spelling,
    comment: Option<String>,
}

#[derive(Debug, Clone, Copy)]
enum ListStyle {
    Block { indentless: bool },
    Flow,
}

#[derive(Debug, Clone)]
enum Key {
    Image { quoted: bool },
    Environment { as_map: bool },
    Command,
    Ports,
    Labels,
    Comment(String),
    Blank,
    Merge,
    Privileged(bool),
    CapAdd(ListStyle, Vec<Item>, bool),
    CapDrop(ListStyle, Vec<Item>, bool),
}

impl Key {
    /// Keys that may appear once per mapping share a kind; comments and blanks repeat.
    fn kind(&self) -> Option<u8> {
        Some(match self {
            Key::Image { .. } => 0,
            Key::Environment { .. } => 1,
            Key::Command => 2,
            Key::Ports => 3,
            Key::Labels => 4,
            Key::Merge => 5,
            Key::Privileged(_) => 6,
            Key::CapAdd(..) => 7,
            Key::CapDrop(..) => 8,
            Key::Comment(_) | Key::Blank => return None,
        })
    }
}

#[derive(Debug, Clone)]
struct Service {
    keys: Vec<Key>,
    comment_before: bool,
    blank_after: bool,
    recommendation: Option<Vec<(Capability, String)>>,
}

#[derive(Debug, Clone)]
struct Defaults {
    cap_add: Option<Vec<Capability>>,
    drop_all: bool,
    privileged: Option<bool>,
}

#[derive(Debug, Clone)]
struct Document {
    version: bool,
    defaults: Option<Defaults>,
    services: Vec<Service>,
    volumes: bool,
    crlf: bool,
}

fn comment_text() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9 #:'\"/().,-]{0,30}"
}

fn spelling() -> impl Strategy<Value = Spelling> {
    select(vec![
        Spelling::Upper,
        Spelling::Prefixed,
        Spelling::Lower,
        Spelling::DoubleQuoted,
        Spelling::SingleQuoted,
    ])
}

fn item(allow_all: bool) -> impl Strategy<Value = Item> {
    let cap = if allow_all {
        prop_oneof![1 => Just(None), 3 => select(POOL).prop_map(Some)].boxed()
    } else {
        select(POOL).prop_map(Some).boxed()
    };
    (cap, spelling(), proptest::option::of(comment_text())).prop_map(|(cap, spelling, comment)| {
        Item {
            cap,
            spelling,
            comment,
        }
    })
}

fn list_style() -> impl Strategy<Value = ListStyle> {
    prop_oneof![
        any::<bool>().prop_map(|indentless| ListStyle::Block { indentless }),
        Just(ListStyle::Flow),
    ]
}

fn key() -> impl Strategy<Value = Key> {
    prop_oneof![
        any::<bool>().prop_map(|quoted| Key::Image { quoted }),
        any::<bool>().prop_map(|as_map| Key::Environment { as_map }),
        Just(Key::Command),
        Just(Key::Ports),
        Just(Key::Labels),
        comment_text().prop_map(Key::Comment),
        Just(Key::Blank),
        Just(Key::Merge),
        any::<bool>().prop_map(Key::Privileged),
        (
            list_style(),
            prop::collection::vec(item(false), 0..4),
            any::<bool>()
        )
            .prop_map(|(style, items, interior)| Key::CapAdd(style, items, interior)),
        (
            list_style(),
            prop::collection::vec(item(true), 0..3),
            any::<bool>()
        )
            .prop_map(|(style, items, interior)| Key::CapDrop(style, items, interior)),
    ]
}

fn service() -> impl Strategy<Value = Service> {
    (
        prop::collection::vec(key(), 0..9),
        any::<bool>(),
        any::<bool>(),
        proptest::option::of(prop::collection::vec(
            (select(POOL), "[a-zA-Z0-9 #:'\"/().,\n-]{0,100}"),
            0..4,
        )),
    )
        .prop_map(|(keys, comment_before, blank_after, recommendation)| {
            let mut seen = BTreeSet::new();
            let mut keys: Vec<Key> = keys
                .into_iter()
                .filter(|key| key.kind().is_none_or(|kind| seen.insert(kind)))
                .collect();
            if !keys.iter().any(|key| matches!(key, Key::Image { .. })) {
                keys.insert(keys.len() / 2, Key::Image { quoted: false });
            }
            Service {
                keys,
                comment_before,
                blank_after,
                recommendation,
            }
        })
}

fn document() -> impl Strategy<Value = Document> {
    (
        any::<bool>(),
        proptest::option::of(
            (
                proptest::option::of(prop::collection::vec(select(POOL), 0..3)),
                any::<bool>(),
                proptest::option::of(any::<bool>()),
            )
                .prop_map(|(cap_add, drop_all, privileged)| Defaults {
                    cap_add,
                    drop_all,
                    privileged,
                }),
        ),
        prop::collection::vec(service(), 1..=NAMES.len()),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(version, defaults, mut services, volumes, crlf)| {
            if defaults.is_none() {
                for service in &mut services {
                    service.keys.retain(|key| !matches!(key, Key::Merge));
                }
            }
            Document {
                version,
                defaults,
                services,
                volumes,
                crlf,
            }
        })
}

fn spell(item: &Item) -> String {
    let name = item.cap.map_or("ALL", Capability::short_name);
    match item.spelling {
        Spelling::Upper => name.to_owned(),
        Spelling::Prefixed if item.cap.is_some() => format!("CAP_{name}"),
        Spelling::Prefixed => name.to_owned(),
        Spelling::Lower => name.to_ascii_lowercase(),
        Spelling::DoubleQuoted => format!("\"{name}\""),
        Spelling::SingleQuoted => format!("'{name}'"),
    }
}

/// The generated text, and for each line the service whose capability key it belongs to.
struct Rendered {
    text: String,
    capability_line_of: Vec<Option<String>>,
}

struct Writer {
    lines: Vec<(String, Option<String>)>,
}

impl Writer {
    fn line(&mut self, text: impl Into<String>) {
        self.lines.push((text.into(), None));
    }

    fn capability_line(&mut self, service: &str, text: impl Into<String>) {
        self.lines.push((text.into(), Some(service.to_owned())));
    }

    fn list(&mut self, service: &str, key: &str, style: ListStyle, items: &[Item], interior: bool) {
        match style {
            ListStyle::Flow => {
                let names: Vec<String> = items.iter().map(spell).collect();
                let comment = if interior { "  # flow list" } else { "" };
                self.capability_line(
                    service,
                    format!("    {key}: [{}]{comment}", names.join(", ")),
                );
            }
            ListStyle::Block { .. } if items.is_empty() => {
                self.capability_line(service, format!("    {key}: []"));
            }
            ListStyle::Block { indentless } => {
                let indent = if indentless { "    " } else { "      " };
                self.capability_line(service, format!("    {key}:"));
                for (index, item) in items.iter().enumerate() {
                    if interior && index == 1 {
                        self.capability_line(service, format!("{indent}# inside the list"));
                    }
                    let comment = item
                        .comment
                        .as_ref()
                        .map_or(String::new(), |comment| format!("  # {comment}"));
                    self.capability_line(service, format!("{indent}- {}{comment}", spell(item)));
                }
            }
        }
    }
}

fn render(document: &Document) -> Rendered {
    let mut out = Writer { lines: Vec::new() };
    out.line("# generated Compose file");
    if document.version {
        out.line("version: \"3.8\"");
    }
    if let Some(defaults) = &document.defaults {
        out.line("x-defaults: &defaults");
        out.line("  restart: \"no\"");
        if let Some(caps) = &defaults.cap_add {
            let names: Vec<&str> = caps.iter().map(|cap| cap.short_name()).collect();
            out.line(format!("  cap_add: [{}]", names.join(", ")));
        }
        if defaults.drop_all {
            out.line("  cap_drop:");
            out.line("    - ALL");
        }
        if let Some(privileged) = defaults.privileged {
            out.line(format!("  privileged: {privileged}"));
        }
    }
    out.line("services:");
    for (service, name) in document.services.iter().zip(NAMES) {
        if service.comment_before {
            out.line(format!("  # the {name} service"));
        }
        out.line(format!("  {name}:"));
        for key in &service.keys {
            match key {
                Key::Image { quoted: true } => out.line(format!("    image: \"busybox:{name}\"")),
                Key::Image { quoted: false } => out.line("    image: busybox"),
                Key::Environment { as_map: true } => {
                    out.line("    environment:");
                    out.line("      MODE: \"production\"  # not debug");
                }
                Key::Environment { as_map: false } => {
                    out.line("    environment:");
                    out.line("      - MODE=production");
                    out.line("      - 'QUOTED=a # b'");
                }
                Key::Command => {
                    out.line("    command: |");
                    out.line("      sh -c 'echo hi'");
                    out.line("      # not a comment: part of the command");
                }
                Key::Ports => out.line("    ports: [\"8080:80\", '9090']"),
                Key::Labels => out.line("    labels: {team: core, \"tier\": 'back'}"),
                Key::Comment(text) => out.line(format!("    # {text}")),
                Key::Blank => out.line(""),
                Key::Merge => out.line("    <<: *defaults"),
                Key::Privileged(value) => {
                    out.capability_line(name, format!("    privileged: {value}"))
                }
                Key::CapAdd(style, items, interior) => {
                    out.list(name, "cap_add", *style, items, *interior)
                }
                Key::CapDrop(style, items, interior) => {
                    out.list(name, "cap_drop", *style, items, *interior)
                }
            }
        }
        if service.blank_after {
            out.line("");
        }
    }
    if document.volumes {
        out.line("volumes:");
        out.line("  data: {}");
    }
    let eol = if document.crlf { "\r\n" } else { "\n" };
    let text = out
        .lines
        .iter()
        .map(|(line, _)| format!("{line}{eol}"))
        .collect();
    Rendered {
        text,
        capability_line_of: out.lines.into_iter().map(|(_, owner)| owner).collect(),
    }
}

fn recommendations(document: &Document) -> Recommendations {
    document
        .services
        .iter()
        .zip(NAMES)
        .filter_map(|(service, name)| {
            let recommendation = service.recommendation.clone()?;
            Some((
                (*name).to_owned(),
                ServiceRecommendation::new(recommendation),
            ))
        })
        .collect()
}

/// A line `apply` may write.
fn is_written_line(line: &str) -> bool {
    let trimmed = line.trim_end_matches(['\r', '\n']).trim_start();
    matches!(
        trimmed,
        "cap_drop: [ALL]" | "cap_add:" | "cap_add: []" | "privileged: false"
    ) || trimmed
        .strip_prefix("- ")
        .map(|item| item.split("  # ").next().unwrap_or("").trim_end())
        .is_some_and(|name| name.parse::<Capability>().is_ok() && !name.contains("CAP_"))
}

fn project(text: &str) -> Result<ComposeProject, compose::ComposeError> {
    ComposeProject::from_texts([(Path::new("compose.yml").to_path_buf(), text.to_owned())])
}

proptest! {
    // PROPTEST_CASES=5000 runs a longer search.
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|n| n.parse().ok()).unwrap_or(400),
        ..ProptestConfig::default()
    })]

    #[test]
    fn apply_round_trips_everything_but_the_capability_keys(document in document()) {
        let rendered = render(&document);
        let input = rendered.text.as_str();
        let before = project(input).map_err(|error| {
            TestCaseError::fail(format!("the generator wrote invalid Compose: {error}\n{input}"))
        })?;
        let recommendations = recommendations(&document);
        let options = ApplyOptions {
            services: Vec::new(),
            privileged: PrivilegedPolicy::Remove,
        };
        let (output, report) =
            compose::apply_to_text(Path::new("compose.yml"), input, &recommendations, &options)
                .map_err(|error| TestCaseError::fail(format!("{error}\n{input}")))?;

        // 1. The output parses.
        let after = project(&output)
            .map_err(|error| TestCaseError::fail(format!("{error}\n{output}")))?;

        // 2. Without the capability keys of profiled services, input and output are the same
        //    lines in the same order; what was added there is only what capprof writes.
        let profiled: BTreeSet<&str> = recommendations.services().collect();
        let input_lines: Vec<&str> = input.split_inclusive('\n').collect();
        let kept_input: Vec<&str> = input_lines
            .iter()
            .zip(&rendered.capability_line_of)
            .filter(|(_, owner)| !owner.as_deref().is_some_and(|s| profiled.contains(s)))
            .map(|(line, _)| *line)
            .collect();
        let input_capability_lines: BTreeSet<&str> = input_lines
            .iter()
            .zip(&rendered.capability_line_of)
            .filter(|(_, owner)| owner.is_some())
            .map(|(line, _)| *line)
            .collect();
        let mut section: Option<&str> = None;
        let mut in_capability_key = false;
        let mut kept_output = Vec::new();
        for line in output.split_inclusive('\n') {
            let bare = line.trim_end_matches(['\r', '\n']);
            if let Some(name) = bare.strip_prefix("  ").and_then(|rest| rest.strip_suffix(':'))
                && NAMES.contains(&name)
            {
                section = Some(name);
            } else if !bare.is_empty() && !bare.starts_with(' ') {
                section = None;
            }
            let trimmed = bare.trim_start();
            let indent = bare.len() - trimmed.len();
            let starts_key = indent == 4
                && ["cap_add:", "cap_drop:", "privileged:"]
                    .iter()
                    .any(|key| trimmed.starts_with(key));
            let continues_key = in_capability_key
                && (trimmed.starts_with("- ") || trimmed == "# inside the list");
            in_capability_key = starts_key || continues_key;
            if in_capability_key && section.is_some_and(|name| profiled.contains(name)) {
                prop_assert!(
                    is_written_line(line) || input_capability_lines.contains(line),
                    "a capability line neither capprof's nor the input's: {:?}\n{}",
                    line,
                    output
                );
            } else {
                kept_output.push(line);
            }
        }
        prop_assert_eq!(
            &kept_input, &kept_output,
            "lines outside the edited keys differ\n{}\n---\n{}", input, output
        );
        if document.crlf {
            prop_assert!(!output.replace("\r\n", "").contains('\n'), "mixed line endings");
        }

        // 3. Each profiled service resolves to its recommendation; the others are unchanged.
        prop_assert!(report.remaining.is_empty(), "{}", report);
        prop_assert!(report.indirectly_changed.is_empty(), "{}", report);
        for name in before.service_names() {
            let now = after.capability_settings(&name).unwrap();
            match recommendations.get(&name) {
                Some(recommendation) => {
                    let expected = CapSettings {
                        cap_add: CapSet::of(recommendation.needed().into_keys()),
                        cap_drop: CapSet::only_all(),
                        privileged: false,
                    };
                    prop_assert_eq!(now, expected, "service {}\n{}", name, output);
                }
                None => prop_assert_eq!(
                    now,
                    before.capability_settings(&name).unwrap(),
                    "unprofiled service {} changed\n{}", name, output
                ),
            }
        }

        // 4. Idempotent.
        let (again, second) =
            compose::apply_to_text(Path::new("compose.yml"), &output, &recommendations, &options)
                .unwrap();
        prop_assert_eq!(&again, &output);
        prop_assert!(second.updated.is_empty(), "{}", second);
    }
}
