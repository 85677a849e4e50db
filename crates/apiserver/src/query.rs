//! Query parameters read as kube-apiserver's parameter codec reads them: the first value of a
//! repeated parameter wins, booleans are false only when absent, `0` or `false` (any case) and
//! true for anything else (`watch=True`, `watch=yes`, `watch=`), and integers go through Go's
//! `strconv.ParseInt`, whose error is the message of the 400 answer.

use crate::error::ApiError;
use std::collections::HashMap;

/// The query of a request: each parameter's first value.
pub fn first_values(pairs: Vec<(String, String)>) -> HashMap<String, String> {
    let mut query = HashMap::with_capacity(pairs.len());
    for (k, v) in pairs {
        query.entry(k).or_insert(v);
    }
    query
}

/// A boolean parameter (`Convert_Slice_string_To_bool`).
pub fn flag(value: Option<&str>) -> bool {
    value.is_some_and(|v| v != "0" && !v.eq_ignore_ascii_case("false"))
}

/// An integer parameter (`Convert_Slice_string_To_int64`): absent is `None`, anything Go's
/// `strconv.ParseInt(v, 10, 64)` refuses is a 400 with Go's message.
pub fn int64(value: Option<&str>) -> Result<Option<i64>, ApiError> {
    let Some(v) = value else { return Ok(None) };
    parse_int(v).map(Some).map_err(ApiError::bad_request)
}

/// `strconv.ParseInt(v, 10, 64)`: an optional sign, then ASCII digits, nothing else.
fn parse_int(v: &str) -> Result<i64, String> {
    let digits = v.strip_prefix(['+', '-']).unwrap_or(v);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("strconv.ParseInt: parsing {v:?}: invalid syntax"));
    }
    v.trim_start_matches('+')
        .parse::<i64>()
        .map_err(|_| format!("strconv.ParseInt: parsing {v:?}: value out of range"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn booleans_are_false_only_when_absent_zero_or_false() {
        let table: &[(Option<&str>, bool)] = &[
            (None, false),
            (Some("0"), false),
            (Some("false"), false),
            (Some("False"), false),
            (Some("FALSE"), false),
            (Some("fAlSe"), false),
            (Some("1"), true),
            (Some("true"), true),
            (Some("True"), true),
            (Some("TRUE"), true),
            (Some("t"), true),
            (Some("yes"), true),
            (Some(""), true),
            (Some("f"), true),
            (Some("00"), true),
        ];
        for (v, want) in table {
            assert_eq!(flag(*v), *want, "{v:?}");
        }
    }

    #[test]
    fn integers_take_go_syntax_and_give_go_errors() {
        assert_eq!(int64(None).unwrap(), None);
        assert_eq!(int64(Some("42")).unwrap(), Some(42));
        assert_eq!(int64(Some("-5")).unwrap(), Some(-5));
        assert_eq!(int64(Some("+7")).unwrap(), Some(7));
        assert_eq!(int64(Some("007")).unwrap(), Some(7));
        for (v, msg) in [
            ("abc", r#"strconv.ParseInt: parsing "abc": invalid syntax"#),
            ("", r#"strconv.ParseInt: parsing "": invalid syntax"#),
            (" 1", r#"strconv.ParseInt: parsing " 1": invalid syntax"#),
            ("1.5", r#"strconv.ParseInt: parsing "1.5": invalid syntax"#),
            ("+-1", r#"strconv.ParseInt: parsing "+-1": invalid syntax"#),
            (
                "99999999999999999999",
                r#"strconv.ParseInt: parsing "99999999999999999999": value out of range"#,
            ),
        ] {
            let e = int64(Some(v)).unwrap_err();
            assert_eq!((e.code, e.message.as_str()), (400, msg), "{v:?}");
        }
    }

    #[test]
    fn a_repeated_parameter_keeps_its_first_value() {
        let q = first_values(vec![
            ("watch".into(), "false".into()),
            ("watch".into(), "true".into()),
            ("limit".into(), "3".into()),
        ]);
        assert_eq!(q["watch"], "false");
        assert_eq!(q["limit"], "3");
    }
}
