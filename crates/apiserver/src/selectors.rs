//! Label selectors (equality- and set-based) and field selectors: parsing with kube-apiserver's
//! error messages, and matching against stored JSON objects.

use crate::error::ApiError;
use crate::registry::Strategy;
use serde_json::Value;
use std::collections::BTreeMap;

/// One label requirement.
#[derive(Debug, Clone, PartialEq)]
pub enum Req {
    /// `k=v`, `k==v`, `k in (v1,v2)`
    In(String, Vec<String>),
    /// `k!=v`, `k notin (v1,v2)`
    NotIn(String, Vec<String>),
    /// `k`
    Exists(String),
    /// `!k`
    NotExists(String),
    /// `k>n`
    Gt(String, i64),
    /// `k<n`
    Lt(String, i64),
}

/// A parsed label selector (all requirements must match).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LabelSelector(pub Vec<Req>);

/// A token of apimachinery's label selector lexer.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Tok {
    Error,
    End,
    OpenPar,
    ClosedPar,
    Comma,
    Not,
    Equals,
    DoubleEquals,
    NotEquals,
    Gt,
    Lt,
    In,
    NotIn,
    Ident,
}

/// The tokens spelled by special symbols or keywords.
fn keyword(s: &str) -> Option<Tok> {
    Some(match s {
        "(" => Tok::OpenPar,
        ")" => Tok::ClosedPar,
        "," => Tok::Comma,
        "!" => Tok::Not,
        "=" => Tok::Equals,
        "==" => Tok::DoubleEquals,
        "!=" => Tok::NotEquals,
        ">" => Tok::Gt,
        "<" => Tok::Lt,
        "in" => Tok::In,
        "notin" => Tok::NotIn,
        _ => return None,
    })
}

fn is_special(c: u8) -> bool {
    matches!(c, b'=' | b'!' | b'(' | b')' | b',' | b'>' | b'<')
}

/// Splits a label selector into tokens as apimachinery's lexer does: identifiers run until
/// whitespace or a special symbol; special symbols are read greedily while they still spell a
/// token (`!=`, `==`); a NUL byte ends the input.
fn lex(s: &str) -> Vec<(Tok, String)> {
    let b = s.as_bytes();
    let end = b.iter().position(|c| *c == 0).unwrap_or(b.len());
    let b = &b[..end];
    let mut i = 0;
    let mut out = vec![];
    loop {
        while i < b.len() && matches!(b[i], b' ' | b'\t' | b'\r' | b'\n') {
            i += 1;
        }
        if i == b.len() {
            out.push((Tok::End, String::new()));
            return out;
        }
        let start = i;
        if is_special(b[i]) {
            let mut last: Option<(Tok, usize)> = None;
            while i < b.len() && is_special(b[i]) {
                let spelled = String::from_utf8_lossy(&b[start..=i]);
                match keyword(&spelled) {
                    Some(t) => last = Some((t, i + 1)),
                    None if last.is_some() => break,
                    None => {}
                }
                i += 1;
            }
            match last {
                Some((t, at)) => {
                    i = at;
                    out.push((t, String::from_utf8_lossy(&b[start..at]).into_owned()));
                }
                None => out.push((
                    Tok::Error,
                    format!(
                        "error expected: keyword found '{}'",
                        String::from_utf8_lossy(&b[start..i])
                    ),
                )),
            }
        } else {
            while i < b.len() && !is_special(b[i]) && !matches!(b[i], b' ' | b'\t' | b'\r' | b'\n')
            {
                i += 1;
            }
            let word = String::from_utf8_lossy(&b[start..i]).into_owned();
            out.push((keyword(&word).unwrap_or(Tok::Ident), word));
        }
    }
}

/// `field.Invalid(path, value, detail)` as apimachinery prints it.
fn invalid_value(path: &str, value: &str, detail: &str) -> String {
    format!("{path}: Invalid value: {value:?}: {detail}")
}

/// apimachinery's label selector parser (`labels.Parse`), with its error messages.
struct Parser {
    toks: Vec<(Tok, String)>,
    pos: usize,
}

impl Parser {
    /// The next token; in a values context `in` and `notin` are identifiers.
    fn peek(&self) -> (Tok, &str) {
        let (t, lit) = &self.toks[self.pos.min(self.toks.len() - 1)];
        (Self::as_value(*t), lit)
    }

    fn next(&mut self) -> (Tok, String) {
        let (t, lit) = self.toks[self.pos.min(self.toks.len() - 1)].clone();
        self.pos += 1;
        (Self::as_value(t), lit)
    }

    fn as_value(t: Tok) -> Tok {
        if matches!(t, Tok::In | Tok::NotIn) {
            Tok::Ident
        } else {
            t
        }
    }

    fn selector(&mut self) -> Result<Vec<Req>, String> {
        let mut reqs = vec![];
        loop {
            let (t, lit) = self.peek();
            match t {
                Tok::Ident | Tok::Not => {
                    let r = self
                        .requirement()
                        .map_err(|e| format!("unable to parse requirement: {e}"))?;
                    reqs.push(r);
                    let (t, lit) = self.next();
                    match t {
                        Tok::End => return Ok(reqs),
                        Tok::Comma => {
                            let (t2, l2) = self.peek();
                            if !matches!(t2, Tok::Ident | Tok::Not) {
                                return Err(format!(
                                    "found '{l2}', expected: identifier after ','"
                                ));
                            }
                        }
                        _ => {
                            return Err(format!("found '{lit}', expected: ',' or 'end of string'"));
                        }
                    }
                }
                Tok::End => return Ok(reqs),
                _ => {
                    return Err(format!(
                        "found '{lit}', expected: !, identifier, or 'end of string'"
                    ));
                }
            }
        }
    }

    fn requirement(&mut self) -> Result<Req, String> {
        let (mut t, mut key) = self.next();
        let negated = t == Tok::Not;
        if negated {
            (t, key) = self.next();
        }
        if t != Tok::Ident {
            return Err(format!("found '{key}', expected: identifier"));
        }
        let errs = agent_sandbox_api::validation::label_key_errors(&key);
        if !errs.is_empty() {
            return Err(invalid_value("<nil>", &key, &errs.join("; ")));
        }
        // `!key` ends the requirement whatever follows (the caller refuses anything but a
        // separator); `key` alone before a separator is an existence test.
        if negated {
            return Ok(Req::NotExists(key));
        }
        if matches!(self.peek().0, Tok::End | Tok::Comma) {
            return Ok(Req::Exists(key));
        }
        let (op, lit) = self.toks[self.pos.min(self.toks.len() - 1)].clone();
        self.pos += 1;
        let values = match op {
            Tok::In | Tok::NotIn => self.values()?,
            Tok::Equals | Tok::DoubleEquals | Tok::NotEquals | Tok::Gt | Tok::Lt => {
                vec![self.exact_value()?]
            }
            _ => {
                return Err(format!(
                    "found '{lit}', expected: in, notin, =, ==, !=, gt, lt"
                ));
            }
        };
        let mut errs = vec![];
        if matches!(op, Tok::Gt | Tok::Lt) {
            for (i, v) in values.iter().enumerate() {
                if v.parse::<i64>().is_err() {
                    errs.push(invalid_value(
                        &format!("values[{i}]"),
                        v,
                        "for 'Gt', 'Lt' operators, the value must be an integer",
                    ));
                }
            }
        }
        for (i, v) in values.iter().enumerate() {
            let e = agent_sandbox_api::validation::label_value_errors(v);
            if !e.is_empty() {
                errs.push(invalid_value(
                    &format!("values[{i}][{key}]"),
                    v,
                    &e.join("; "),
                ));
            }
        }
        match errs.len() {
            0 => {}
            1 => return Err(errs.remove(0)),
            _ => return Err(format!("[{}]", errs.join(", "))),
        }
        Ok(match op {
            Tok::In | Tok::Equals | Tok::DoubleEquals => Req::In(key, values),
            Tok::NotIn | Tok::NotEquals => Req::NotIn(key, values),
            Tok::Gt => Req::Gt(key, values[0].parse().unwrap_or_default()),
            _ => Req::Lt(key, values[0].parse().unwrap_or_default()),
        })
    }

    /// `( v1, v2 )`: a sorted set; `()` and empty entries are the empty value.
    fn values(&mut self) -> Result<Vec<String>, String> {
        let (t, lit) = self.next();
        if t != Tok::OpenPar {
            return Err(format!("found '{lit}' expected: '('"));
        }
        let (t, lit) = self.peek();
        let lit = lit.to_string();
        let mut set = std::collections::BTreeSet::new();
        match t {
            Tok::Ident | Tok::Comma => {
                self.identifiers(&mut set)?;
                if self.next().0 != Tok::ClosedPar {
                    return Err(format!("found '{lit}', expected: ')'"));
                }
            }
            Tok::ClosedPar => {
                self.next();
                set.insert(String::new());
            }
            _ => return Err(format!("found '{lit}', expected: ',', ')' or identifier")),
        }
        Ok(set.into_iter().collect())
    }

    fn identifiers(&mut self, set: &mut std::collections::BTreeSet<String>) -> Result<(), String> {
        loop {
            let (t, lit) = self.next();
            match t {
                Tok::Ident => {
                    set.insert(lit);
                    match self.peek() {
                        (Tok::Comma, _) => continue,
                        (Tok::ClosedPar, _) => return Ok(()),
                        (_, l2) => return Err(format!("found '{l2}', expected: ',' or ')'")),
                    }
                }
                Tok::Comma => {
                    if set.is_empty() {
                        set.insert(String::new());
                    }
                    match self.peek().0 {
                        Tok::ClosedPar => {
                            set.insert(String::new());
                            return Ok(());
                        }
                        Tok::Comma => {
                            set.insert(String::new());
                        }
                        _ => {}
                    }
                }
                _ => return Err(format!("found '{lit}', expected: ',', or identifier")),
            }
        }
    }

    /// The value after `=`, `==`, `!=`, `>` or `<` (empty before a separator).
    fn exact_value(&mut self) -> Result<String, String> {
        if matches!(self.peek().0, Tok::End | Tok::Comma) {
            return Ok(String::new());
        }
        match self.next() {
            (Tok::Ident, lit) => Ok(lit),
            (_, lit) => Err(format!("found '{lit}', expected: identifier")),
        }
    }
}

impl LabelSelector {
    /// Parses the `labelSelector` query parameter as kube-apiserver does (`labels.Parse`): a
    /// refusal is a 400 with apimachinery's message.
    pub fn parse(s: &str) -> Result<Self, ApiError> {
        let mut p = Parser {
            toks: lex(s),
            pos: 0,
        };
        p.selector()
            .map(LabelSelector)
            .map_err(ApiError::bad_request)
    }

    /// Whether an object's labels match.
    pub fn matches_labels(&self, labels: Option<&serde_json::Map<String, Value>>) -> bool {
        let get = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
        self.0.iter().all(|r| match r {
            Req::In(k, vals) => get(k).is_some_and(|v| vals.iter().any(|x| x == v)),
            Req::NotIn(k, vals) => get(k).is_none_or(|v| !vals.iter().any(|x| x == v)),
            Req::Exists(k) => get(k).is_some(),
            Req::NotExists(k) => get(k).is_none(),
            Req::Gt(k, n) => get(k)
                .and_then(|v| v.parse::<i64>().ok())
                .is_some_and(|v| v > *n),
            Req::Lt(k, n) => get(k)
                .and_then(|v| v.parse::<i64>().ok())
                .is_some_and(|v| v < *n),
        })
    }

    /// Whether an object matches.
    pub fn matches(&self, obj: &Value) -> bool {
        if self.0.is_empty() {
            return true;
        }
        self.matches_labels(obj.pointer("/metadata/labels").and_then(Value::as_object))
    }

    /// Builds a selector from a metav1.LabelSelector JSON (matchLabels and matchExpressions).
    pub fn from_label_selector(sel: &Value) -> Self {
        let mut reqs = vec![];
        if let Some(m) = sel.get("matchLabels").and_then(Value::as_object) {
            for (k, v) in m {
                reqs.push(Req::In(
                    k.clone(),
                    vec![v.as_str().unwrap_or("").to_string()],
                ));
            }
        }
        if let Some(exprs) = sel.get("matchExpressions").and_then(Value::as_array) {
            for e in exprs {
                let k = e
                    .get("key")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string();
                let vals: Vec<String> = e
                    .get("values")
                    .and_then(Value::as_array)
                    .map(|a| {
                        a.iter()
                            .filter_map(|v| v.as_str().map(String::from))
                            .collect()
                    })
                    .unwrap_or_default();
                match e.get("operator").and_then(Value::as_str) {
                    Some("In") => reqs.push(Req::In(k, vals)),
                    Some("NotIn") => reqs.push(Req::NotIn(k, vals)),
                    Some("Exists") => reqs.push(Req::Exists(k)),
                    Some("DoesNotExist") => reqs.push(Req::NotExists(k)),
                    _ => {}
                }
            }
        }
        LabelSelector(reqs)
    }

    /// The selector as a string (`a=b,c in (d,e)`), as the scale subresource reports it.
    pub fn to_query(&self) -> String {
        self.0
            .iter()
            .map(|r| match r {
                Req::In(k, v) if v.len() == 1 => format!("{k}={}", v[0]),
                Req::In(k, v) => format!("{k} in ({})", v.join(",")),
                Req::NotIn(k, v) if v.len() == 1 => format!("{k}!={}", v[0]),
                Req::NotIn(k, v) => format!("{k} notin ({})", v.join(",")),
                Req::Exists(k) => k.clone(),
                Req::NotExists(k) => format!("!{k}"),
                Req::Gt(k, n) => format!("{k}>{n}"),
                Req::Lt(k, n) => format!("{k}<{n}"),
            })
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// A parsed field selector: `(path, wanted, equal?)` terms.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FieldSelector(pub Vec<(String, String, bool)>);

/// Maps a field label to the JSON pointer in the stored object, or None if the kind does not
/// support it: `metadata.name` and `metadata.namespace` for every kind, the rest per strategy.
fn field_pointer(strategy: &dyn Strategy, field: &str) -> Option<String> {
    match field {
        "metadata.name" => Some("/metadata/name".into()),
        "metadata.namespace" => Some("/metadata/namespace".into()),
        _ => strategy.field_pointer(field),
    }
}

/// kube-apiserver's refusal of a field it cannot select on: kinds with their own field label
/// conversion (and custom resources) say "field label not supported", the others fall back to
/// apimachinery's default conversion and its message.
fn unknown_field(strategy: &dyn Strategy, field: &str) -> ApiError {
    ApiError::bad_request(if strategy.converts_field_labels() {
        format!("field label not supported: {field}")
    } else {
        format!(
            "{field:?} is not a known field selector: only \"metadata.name\", \"metadata.namespace\""
        )
    })
}

/// Splits a field selector at the commas that are not escaped.
fn split_terms(s: &str) -> Vec<&str> {
    if s.is_empty() {
        return vec![];
    }
    let mut terms = vec![];
    let (mut start, mut escaped) = (0, false);
    for (i, c) in s.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            ',' => {
                terms.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    terms.push(&s[start..]);
    terms
}

/// A term's field, whether it tests equality, and its raw value, split at the first operator.
fn split_term(term: &str) -> Option<(&str, bool, &str)> {
    (0..term.len())
        .filter(|i| term.is_char_boundary(*i))
        .find_map(|i| {
            let rest = &term[i..];
            [("!=", false), ("==", true), ("=", true)]
                .into_iter()
                .find(|(op, _)| rest.starts_with(op))
                .map(|(op, eq)| (&term[..i], eq, &rest[op.len()..]))
        })
}

/// Undoes a value's escapes (`\\`, `\,`, `\=`); an unescaped `,` or `=` or another escape is
/// refused with apimachinery's message.
fn unescape_value(v: &str) -> Result<String, ApiError> {
    let refuse = |what: String| ApiError::bad_request(format!("invalid field selector: {what}"));
    let mut out = String::with_capacity(v.len());
    let mut escaped = false;
    for c in v.chars() {
        if escaped {
            if !matches!(c, '\\' | ',' | '=') {
                return Err(refuse(format!("invalid escape sequence: \\{c}")));
            }
            out.push(c);
            escaped = false;
            continue;
        }
        match c {
            '\\' => escaped = true,
            ',' | '=' => {
                return Err(refuse(format!(
                    "unescaped character in value: {}",
                    c as u32
                )));
            }
            _ => out.push(c),
        }
    }
    if escaped {
        return Err(refuse("invalid escape sequence: \\".into()));
    }
    Ok(out)
}

impl FieldSelector {
    /// Parses the `fieldSelector` query parameter for a kind as kube-apiserver does
    /// (`fields.ParseSelector`, then the kind's field label conversion): terms split at
    /// unescaped commas and sorted, each split at its first operator (`!=`, `==`, `=`), values
    /// unescaped (`\\`, `\,`, `\=`), then each field checked against the kind.
    pub fn parse(s: &str, strategy: &dyn Strategy) -> Result<Self, ApiError> {
        let mut parts = split_terms(s);
        parts.sort();
        let mut parsed = vec![];
        for part in parts.iter().filter(|p| !p.is_empty()) {
            let (field, eq, value) = split_term(part).ok_or_else(|| {
                ApiError::bad_request(format!(
                    "invalid selector: '{s}'; can't understand '{part}'"
                ))
            })?;
            parsed.push((field, unescape_value(value)?, eq));
        }
        let mut terms = vec![];
        for (field, value, eq) in parsed {
            let ptr =
                field_pointer(strategy, field).ok_or_else(|| unknown_field(strategy, field))?;
            terms.push((ptr, value, eq));
        }
        Ok(FieldSelector(terms))
    }

    /// Whether an object matches.
    pub fn matches(&self, obj: &Value) -> bool {
        self.0.iter().all(|(ptr, want, eq)| {
            let have = match obj.pointer(ptr) {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Bool(b)) => b.to_string(),
                Some(Value::Number(n)) => n.to_string(),
                _ => String::new(),
            };
            (have == *want) == *eq
        })
    }

    /// The `metadata.name` this selector pins, if any (for fast lookups).
    pub fn exact_name(&self) -> Option<&str> {
        self.0
            .iter()
            .find(|(p, _, eq)| p == "/metadata/name" && *eq)
            .map(|(_, v, _)| v.as_str())
    }
}

/// A label + field selector pair.
#[derive(Debug, Clone, Default)]
pub struct Selector {
    /// Labels.
    pub labels: LabelSelector,
    /// Fields.
    pub fields: FieldSelector,
}

impl Selector {
    /// Whether an object matches both.
    pub fn matches(&self, obj: &Value) -> bool {
        self.labels.matches(obj) && self.fields.matches(obj)
    }
}

/// Labels as a sorted map (used in tests and printing).
pub fn labels_of(obj: &Value) -> BTreeMap<String, String> {
    obj.pointer("/metadata/labels")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_string()))
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn label_selectors() {
        let o = json!({"metadata": {"labels": {"app": "web", "tier": "fe", "n": "5"}}});
        let m = |s: &str| LabelSelector::parse(s).unwrap().matches(&o);
        assert!(m("app=web"));
        assert!(m("app==web,tier"));
        assert!(!m("app!=web"));
        assert!(m("app in (web, db)"));
        assert!(!m("app notin (web)"));
        assert!(m("!missing"));
        assert!(!m("missing"));
        assert!(m("n>3"));
        assert!(!m("n<3"));
        assert!(m("env notin (prod)"));
        assert!(LabelSelector::parse("a b=c").is_err());
    }

    #[test]
    fn field_selectors() {
        let o =
            json!({"metadata": {"name": "p", "namespace": "ns"}, "status": {"phase": "Running"}});
        let f = FieldSelector::parse(
            "metadata.name=p,status.phase!=Failed",
            &crate::registry::Pod,
        )
        .unwrap();
        assert!(f.matches(&o));
        assert_eq!(f.exact_name(), Some("p"));
        assert!(FieldSelector::parse("status.phase=Running", &crate::registry::Generic).is_err());
    }

    /// Messages as apimachinery v0.36's `labels.Parse` gives them (each taken from it).
    #[test]
    fn label_selector_errors_are_apimachinerys() {
        let name_part = "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')";
        let cases: &[(&str, String)] = &[
            ("a b=c", "unable to parse requirement: found 'b', expected: in, notin, =, ==, !=, gt, lt".into()),
            ("a=b,", "found '', expected: identifier after ','".into()),
            ("env in (a,b", "unable to parse requirement: found '', expected: ',' or ')'".into()),
            ("env notin a", "unable to parse requirement: found 'a' expected: '('".into()),
            ("!", "unable to parse requirement: found '', expected: identifier".into()),
            ("x=y=z", "found '=', expected: ',' or 'end of string'".into()),
            ("-a=b", format!("unable to parse requirement: <nil>: Invalid value: \"-a\": {name_part}")),
            ("a=bad value!", "found 'value', expected: ',' or 'end of string'".into()),
            ("a>b", "unable to parse requirement: values[0]: Invalid value: \"b\": for 'Gt', 'Lt' operators, the value must be an integer".into()),
            ("a=(b", "unable to parse requirement: found '(', expected: identifier".into()),
            ("a in (b!c,d)", "unable to parse requirement: found '!', expected: ',' or ')'".into()),
            ("a notin (x,", "unable to parse requirement: found '', expected: ',', or identifier".into()),
            (",a", "found ',', expected: !, identifier, or 'end of string'".into()),
            ("a,,b", "found ',', expected: identifier after ','".into()),
            ("a!b", "unable to parse requirement: found '!', expected: in, notin, =, ==, !=, gt, lt".into()),
            (">a", "found '>', expected: !, identifier, or 'end of string'".into()),
            ("a>1>2", "found '>', expected: ',' or 'end of string'".into()),
            (&format!("a={}", "b".repeat(64)), format!("unable to parse requirement: values[0][a]: Invalid value: \"{}\": must be no more than 63 bytes", "b".repeat(64))),
            (&format!("{}=b", "a".repeat(64)), format!("unable to parse requirement: <nil>: Invalid value: \"{}\": name part must be no more than 63 bytes", "a".repeat(64))),
        ];
        for (sel, want) in cases {
            let e = LabelSelector::parse(sel).expect_err(sel);
            assert_eq!((e.code, &e.message), (400, want), "{sel}");
        }
        for ok in [
            "a==",
            "a in ()",
            "a<1",
            "a,b",
            "!a,b=c",
            "a!=",
            "a =",
            "x in (a,,b)",
            "a in (c,b) ,  d notin (e)",
        ] {
            assert!(LabelSelector::parse(ok).is_ok(), "{ok}");
        }
        assert_eq!(
            LabelSelector::parse("x in (a,,b)").unwrap().0,
            [Req::In(
                "x".into(),
                vec![String::new(), "a".into(), "b".into()]
            )]
        );
        assert_eq!(
            LabelSelector::parse("!a,b notin (c)").unwrap().0,
            [
                Req::NotExists("a".into()),
                Req::NotIn("b".into(), vec!["c".into()])
            ]
        );
    }

    /// Messages as apimachinery v0.36's `fields.ParseSelector` and the field label conversion
    /// give them.
    #[test]
    fn field_selector_errors_are_apimachinerys() {
        let pod = &crate::registry::Pod;
        let cases = [
            ("a", "invalid selector: 'a'; can't understand 'a'"),
            (
                "a=b=c",
                "invalid field selector: unescaped character in value: 61",
            ),
            ("b=2,a", "invalid selector: 'b=2,a'; can't understand 'a'"),
            (
                "a=b\\",
                "invalid field selector: invalid escape sequence: \\",
            ),
            (
                "a=\\q",
                "invalid field selector: invalid escape sequence: \\q",
            ),
            ("spec.foo=1", "field label not supported: spec.foo"),
            (
                " metadata.name=b",
                "field label not supported:  metadata.name",
            ),
        ];
        for (sel, want) in cases {
            let e = FieldSelector::parse(sel, pod).expect_err(sel);
            assert_eq!((e.code, e.message.as_str()), (400, want), "{sel}");
        }
        let f = FieldSelector::parse("metadata.name=a\\,b,status.phase!=Failed", pod).unwrap();
        assert_eq!(
            f.0,
            [
                ("/metadata/name".to_string(), "a,b".to_string(), true),
                ("/status/phase".to_string(), "Failed".to_string(), false)
            ]
        );
    }

    #[test]
    fn unknown_fields_are_refused_with_kube_apiservers_messages() {
        use crate::registry::{ConfigData, Custom, Pod, Service, config_data::Kind};
        let msg = |s: &str, strategy: &dyn Strategy| {
            FieldSelector::parse(s, strategy).unwrap_err().message
        };
        assert_eq!(
            msg("data.k=v", &ConfigData(Kind::ConfigMap)),
            r#""data.k" is not a known field selector: only "metadata.name", "metadata.namespace""#
        );
        assert_eq!(msg("spec.x=1", &Pod), "field label not supported: spec.x");
        assert_eq!(
            msg("spec.x=1", &Custom),
            "field label not supported: spec.x"
        );
        let svc = json!({"metadata": {"name": "s"}, "spec": {"type": "ClusterIP"}});
        let f = FieldSelector::parse("spec.type=ClusterIP", &Service::default()).unwrap();
        assert!(f.matches(&svc));
    }
}
