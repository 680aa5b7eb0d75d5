//! The routes' path templates as a tree of segments, so that a lookup visits only the
//! branches a request path leads to (its literal segments and `*`) instead of trying
//! every route: its cost grows with the path's length, not with the number of routes.
//!
//! The tree only narrows the candidates; each candidate is still checked with
//! `PathTemplate::matches` (verbs, empty segments), so the tree may over-approximate but
//! must never leave out a route that matches (the property test below checks that).

use super::template::{PathTemplate, RequestPath, Segment};
use smallvec::SmallVec;

/// Candidate route indices for one path, in ascending order (the table's precedence).
pub(super) type Candidates = SmallVec<[usize; 8]>;

#[derive(Default)]
pub(super) struct RouteTree {
    root: Node,
}

#[derive(Default)]
struct Node {
    /// Children by literal segment (decoded, as paths are compared), sorted by
    /// `by_length` for binary search.
    literals: Vec<(Box<str>, Node)>,
    /// The child for a `*` segment.
    single: Option<Box<Node>>,
    /// Routes whose template ends here.
    ends: Vec<usize>,
    /// Routes whose template goes on with `**` (the rest of any path).
    rest: Vec<usize>,
}

impl RouteTree {
    /// `templates` in the table's order: candidates are their indices.
    pub(super) fn new<'a>(templates: impl IntoIterator<Item = &'a PathTemplate>) -> Self {
        let mut tree = Self::default();
        for (index, template) in templates.into_iter().enumerate() {
            let mut node = &mut tree.root;
            let mut rest = false;
            for segment in &template.segments {
                node = match segment {
                    Segment::Literal(literal) => node.literal_mut(literal),
                    Segment::Single => node.single.get_or_insert_with(Box::default),
                    Segment::Multi => {
                        rest = true; // always the last segment
                        break;
                    }
                };
            }
            if rest {
                node.rest.push(index);
            } else {
                node.ends.push(index);
            }
        }
        tree
    }

    /// The routes that may match `path`, each once, in ascending order.
    pub(super) fn candidates(&self, path: &RequestPath<'_>) -> Candidates {
        let mut found = Candidates::new();
        self.root.collect(path, 0, &mut found);
        // Each route sits in one node and a walk visits a node at most once, so there are
        // no duplicates; the branches come in literal, then `*` order, not the table's.
        found.sort_unstable();
        found
    }
}

impl Node {
    fn literal_mut(&mut self, literal: &str) -> &mut Node {
        let at = match self
            .literals
            .binary_search_by(|(l, _)| by_length(l, literal))
        {
            Ok(at) => at,
            Err(at) => {
                self.literals.insert(at, (literal.into(), Node::default()));
                at
            }
        };
        &mut self.literals[at].1
    }

    fn literal(&self, segment: &str) -> Option<&Node> {
        self.literals
            .binary_search_by(|(l, _)| by_length(l, segment))
            .ok()
            .map(|at| &self.literals[at].1)
    }

    /// Adds the routes below this node that `path[depth..]` may match. Recursion goes one
    /// level per template segment, so its depth is bounded by the configuration, whatever
    /// the path.
    fn collect(&self, path: &RequestPath<'_>, depth: usize, found: &mut Candidates) {
        // (`extend_from_slice` is not free on an empty slice: most nodes have none.)
        if !self.rest.is_empty() {
            found.extend_from_slice(&self.rest);
        }
        let count = path.segment_count();
        if depth == count {
            if !self.ends.is_empty() {
                found.extend_from_slice(&self.ends);
            }
            return;
        }
        let segment = path.decoded(depth);
        if let Some(child) = self.literal(segment) {
            child.collect(path, depth + 1, found);
        }
        // A template with a verb compares the last segment without it (`/ping:check`).
        if depth + 1 == count
            && let Some(stripped) = path.last_without_verb()
            && stripped != segment
            && let Some(child) = self.literal(stripped)
        {
            child.collect(path, depth + 1, found);
        }
        if let Some(child) = &self.single {
            child.collect(path, depth + 1, found);
        }
    }
}

/// Shorter first, then by bytes: most comparisons of a search end on the lengths, without
/// comparing bytes.
fn by_length(a: &str, b: &str) -> std::cmp::Ordering {
    a.len()
        .cmp(&b.len())
        .then_with(|| a.as_bytes().cmp(b.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn tree_of(templates: &[&str]) -> (Vec<PathTemplate>, RouteTree) {
        let parsed: Vec<PathTemplate> = templates
            .iter()
            .map(|t| PathTemplate::parse(t).unwrap())
            .collect();
        let tree = RouteTree::new(&parsed);
        (parsed, tree)
    }

    fn matching(templates: &[PathTemplate], tree: &RouteTree, path: &str) -> Vec<usize> {
        let path = RequestPath::parse(path).unwrap();
        tree.candidates(&path)
            .into_iter()
            .filter(|&i| templates[i].matches(&path))
            .collect()
    }

    #[test]
    fn literals_stars_rest_and_verbs() {
        let (templates, tree) = tree_of(&[
            "/v1/products/{id}",
            "/v1/products/{id}/reviews",
            "/v1/orders",
            "/v1/{name=**}",
            "/ping:check",
            "/*/x",
            "/",
        ]);
        assert_eq!(matching(&templates, &tree, "/v1/products/7"), [0, 3]);
        assert_eq!(
            matching(&templates, &tree, "/v1/products/7/reviews"),
            [1, 3]
        );
        assert_eq!(matching(&templates, &tree, "/v1/orders"), [2, 3]);
        assert_eq!(matching(&templates, &tree, "/v1"), [3]);
        assert_eq!(matching(&templates, &tree, "/ping:check"), [4]);
        assert_eq!(matching(&templates, &tree, "/ping"), [] as [usize; 0]);
        assert_eq!(matching(&templates, &tree, "/v1/x"), [3, 5]);
        assert_eq!(matching(&templates, &tree, "/"), [6]);
        assert_eq!(
            matching(&templates, &tree, "/nothing/here"),
            [] as [usize; 0]
        );
    }

    #[test]
    fn a_lookup_visits_only_the_branches_of_the_path() {
        // 2,000 routes under /v1: the candidates for one path are the few that share its
        // segments, not the whole list.
        let texts: Vec<String> = (0..1000)
            .flat_map(|i| [format!("/v1/r{i}/{{id}}"), format!("/v1/r{i}/{{id}}/sub")])
            .collect();
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        let (_, tree) = tree_of(&refs);
        let path = RequestPath::parse("/v1/r500/42").unwrap();
        assert_eq!(tree.candidates(&path).as_slice(), [1000]);
    }

    fn template_text() -> impl Strategy<Value = String> {
        let segment = prop_oneof![
            Just("a".to_string()),
            Just("b".to_string()),
            Just("*".to_string()),
            Just("{v}".to_string()),
        ];
        (
            prop::collection::vec(segment, 0..4),
            any::<bool>(),
            prop::option::of(prop_oneof![Just("x"), Just("y")]),
        )
            .prop_map(|(segments, rest, verb)| {
                // Variables need distinct names.
                let mut text = String::new();
                for (i, segment) in segments.iter().enumerate() {
                    text.push('/');
                    text.push_str(&segment.replace("{v}", &format!("{{v{i}}}")));
                }
                if rest {
                    text.push_str("/{rest=**}");
                }
                if let Some(verb) = verb {
                    text.push(':');
                    text.push_str(verb);
                }
                if text.is_empty() {
                    text.push('/');
                }
                text
            })
    }

    fn path_text() -> impl Strategy<Value = String> {
        let segment = prop_oneof![
            Just("a"),
            Just("b"),
            Just("c"),
            Just(""),
            Just("a:x"),
            Just("b:y"),
            Just(":x"),
            Just("%61"),
        ];
        prop::collection::vec(segment, 0..6).prop_map(|segments| {
            let mut text = String::new();
            for segment in segments {
                text.push('/');
                text.push_str(segment);
            }
            if text.is_empty() {
                text.push('/');
            }
            text
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1024))]

        /// The tree never leaves out a route that matches: filtered by `matches`, its
        /// candidates are exactly the routes a scan of every template finds.
        #[test]
        fn the_tree_finds_what_a_full_scan_finds(
            templates in prop::collection::vec(template_text(), 1..12),
            paths in prop::collection::vec(path_text(), 1..8),
        ) {
            let parsed: Vec<PathTemplate> = templates
                .iter()
                .filter_map(|t| PathTemplate::parse(t).ok())
                .collect();
            let tree = RouteTree::new(&parsed);
            for path in &paths {
                let request = RequestPath::parse(path).unwrap();
                let scanned: Vec<usize> =
                    (0..parsed.len()).filter(|&i| parsed[i].matches(&request)).collect();
                let candidates = tree.candidates(&request);
                prop_assert!(candidates.windows(2).all(|w| w[0] < w[1]));
                let found: Vec<usize> = candidates
                    .into_iter()
                    .filter(|&i| parsed[i].matches(&request))
                    .collect();
                prop_assert_eq!(found, scanned, "{:?} on {}", templates, path);
            }
        }
    }
}
