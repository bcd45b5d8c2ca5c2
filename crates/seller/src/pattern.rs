//! Route patterns: the paths a [`PricedRoute`](crate::PricedRoute) answers for.
//!
//! A pattern is a path whose segments are one of:
//! - a literal, such as `forecast` in `/forecast/:city`, equal to the request's segment;
//! - a parameter, `:name` (a letter or `_`, then letters, digits or `_`), matching any one
//!   non-empty segment;
//! - as the last segment only, a rest parameter, `*name`, matching one or more remaining segments
//!   (at least one character in all).
//!
//! Matching is segment by segment on the request's path (without its query): the segments are
//! split on `/` and percent-decoded before they are compared, so `/forec%61st/paris` matches
//! `/forecast/:city` (a server behind the paywall would most likely decode it the same way). A
//! decoded `%2F` stays inside its segment. There is no other normalization: `.` and `..` are
//! segments like any other (a `..` fills a parameter as well as `paris` does), a missing or extra
//! segment is no match, and so is an empty segment where a parameter stands.
//!
//! [`PathMatching::Loose`] additionally compares literals ignoring ASCII case and ignores one
//! trailing slash, for a paywall in front of servers whose routing is not known.

use std::cmp::Ordering;

/// How literally a request's path must equal a route's pattern.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum PathMatching {
    /// Literal segments compare byte for byte (after percent-decoding); a trailing slash is a
    /// segment of its own. Right for an axum router, which routes the same way.
    #[default]
    Strict,
    /// Literal segments compare ignoring ASCII case, and a request path's one trailing slash is
    /// ignored (`/Forecast/paris/` matches `/forecast/:city`). Many servers route that way; a
    /// paywall in front of one should charge for every spelling it would serve. Matching more
    /// only asks for payment: nothing is settled unless the server then answers 2xx.
    Loose,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    /// Percent-decoded.
    Literal(Vec<u8>),
    Param(String),
    Rest(String),
}

/// A parsed route pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoutePattern {
    text: String,
    segments: Vec<Segment>,
}

impl RoutePattern {
    /// Parses `text`; `Err` says what is wrong with it.
    pub fn parse(text: &str) -> Result<RoutePattern, String> {
        let Some(rest) = text.strip_prefix('/') else {
            return Err("path must start with '/'".into());
        };
        if text.contains('?') || text.contains('#') {
            return Err(
                "path must not carry a query or fragment (matching ignores the query)".into(),
            );
        }
        let parts: Vec<&str> = rest.split('/').collect();
        let mut segments = Vec::with_capacity(parts.len());
        for (index, part) in parts.iter().enumerate() {
            let last = index + 1 == parts.len();
            let segment = if let Some(name) = part.strip_prefix(':') {
                check_name(name, part)?;
                Segment::Param(name.to_string())
            } else if let Some(name) = part.strip_prefix('*') {
                check_name(name, part)?;
                if !last {
                    return Err(format!("{part:?} must be the last segment"));
                }
                Segment::Rest(name.to_string())
            } else {
                let decoded = percent_decode(part);
                if decoded == b"." || decoded == b".." {
                    return Err(format!("{part:?} is not a segment a route can have"));
                }
                if decoded.is_empty() && !last {
                    return Err("path must not contain an empty segment (\"//\")".into());
                }
                Segment::Literal(decoded)
            };
            segments.push(segment);
        }
        let mut names: Vec<&str> = segments
            .iter()
            .filter_map(|segment| match segment {
                Segment::Param(name) | Segment::Rest(name) => Some(name.as_str()),
                Segment::Literal(_) => None,
            })
            .collect();
        names.sort_unstable();
        if let Some(pair) = names.windows(2).find(|pair| pair[0] == pair[1]) {
            return Err(format!("parameter {:?} appears twice", pair[0]));
        }
        Ok(RoutePattern {
            text: text.to_string(),
            segments,
        })
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether the pattern has parameters (else it matches one path only).
    pub fn is_template(&self) -> bool {
        self.segments
            .iter()
            .any(|segment| !matches!(segment, Segment::Literal(_)))
    }

    /// The pattern in the `:param` syntax discovery catalogs read (`routeTemplate`): a rest
    /// parameter `*name` is written `:name`.
    pub fn route_template(&self) -> String {
        match self.segments.last() {
            Some(Segment::Rest(name)) => {
                let cut = self.text.len() - name.len() - 1;
                format!("{}:{name}", &self.text[..cut])
            }
            _ => self.text.clone(),
        }
    }

    /// The parameters of `path` if it matches, in pattern order, with their values as sent
    /// (still percent-encoded); `None` if it does not match.
    pub fn matches(&self, path: &str, matching: PathMatching) -> Option<Vec<(String, String)>> {
        let rest = path.strip_prefix('/')?;
        let mut parts: Vec<&str> = rest.split('/').collect();
        let ends_in_rest = matches!(self.segments.last(), Some(Segment::Rest(_)));
        if matching == PathMatching::Loose
            && !ends_in_rest
            && parts.len() == self.segments.len() + 1
            && parts.last() == Some(&"")
        {
            parts.pop();
        }
        let mut params = Vec::new();
        for (index, segment) in self.segments.iter().enumerate() {
            match segment {
                Segment::Literal(expected) => {
                    let part = parts.get(index)?;
                    let decoded = percent_decode(part);
                    let equal = match matching {
                        PathMatching::Strict => decoded == *expected,
                        PathMatching::Loose => decoded.eq_ignore_ascii_case(expected),
                    };
                    if !equal {
                        return None;
                    }
                }
                Segment::Param(name) => {
                    let part = parts.get(index).filter(|part| !part.is_empty())?;
                    params.push((name.clone(), (*part).to_string()));
                }
                Segment::Rest(name) => {
                    let remainder = parts.get(index..)?.join("/");
                    if remainder.is_empty() {
                        return None;
                    }
                    params.push((name.clone(), remainder));
                    return Some(params);
                }
            }
        }
        (parts.len() == self.segments.len()).then_some(params)
    }

    /// Whether both patterns match exactly the same paths (they differ at most in parameter
    /// names).
    pub fn same_shape(&self, other: &RoutePattern) -> bool {
        self.shape() == other.shape()
    }

    /// Orders patterns from the most specific: at the first segment where they differ, a literal
    /// beats a parameter, which beats a rest parameter. Of several patterns matching one path,
    /// the most specific prices it.
    pub fn specificity_cmp(&self, other: &RoutePattern) -> Ordering {
        let rank = |segment: &Segment| match segment {
            Segment::Literal(_) => 2u8,
            Segment::Param(_) => 1,
            Segment::Rest(_) => 0,
        };
        let mine = self.segments.iter().map(rank);
        let theirs = other.segments.iter().map(rank);
        theirs.cmp(mine)
    }

    fn shape(&self) -> Vec<Option<&[u8]>> {
        self.segments
            .iter()
            .map(|segment| match segment {
                Segment::Literal(bytes) => Some(bytes.as_slice()),
                Segment::Param(_) => None,
                Segment::Rest(_) => Some(b"*".as_slice()),
            })
            .collect()
    }
}

fn check_name(name: &str, segment: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let valid = chars
        .next()
        .is_some_and(|first| first.is_ascii_alphabetic() || first == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    if valid {
        Ok(())
    } else {
        Err(format!(
            "{segment:?}: a parameter's name is a letter or '_' followed by letters, digits or '_'"
        ))
    }
}

/// `%XX` sequences decoded to their bytes; a `%` not followed by two hex digits stays as it is.
pub fn percent_decode(text: &str) -> Vec<u8> {
    let bytes = text.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        if bytes[index] == b'%'
            && let (Some(high), Some(low)) = (
                bytes.get(index + 1).and_then(|b| hex_value(*b)),
                bytes.get(index + 2).and_then(|b| hex_value(*b)),
            )
        {
            decoded.push(high * 16 + low);
            index += 3;
        } else {
            decoded.push(bytes[index]);
            index += 1;
        }
    }
    decoded
}

fn hex_value(byte: u8) -> Option<u8> {
    match byte {
        b'0'..=b'9' => Some(byte - b'0'),
        b'a'..=b'f' => Some(byte - b'a' + 10),
        b'A'..=b'F' => Some(byte - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(text: &str) -> RoutePattern {
        RoutePattern::parse(text).unwrap()
    }

    fn strict(pattern_text: &str, path: &str) -> Option<Vec<(String, String)>> {
        pattern(pattern_text).matches(path, PathMatching::Strict)
    }

    fn params(pairs: &[(&str, &str)]) -> Option<Vec<(String, String)>> {
        Some(
            pairs
                .iter()
                .map(|(name, value)| (name.to_string(), value.to_string()))
                .collect(),
        )
    }

    #[test]
    fn exact_paths_match_themselves_only() {
        assert_eq!(strict("/weather", "/weather"), params(&[]));
        assert_eq!(strict("/", "/"), params(&[]));
        assert_eq!(strict("/weather", "/weather/"), None);
        assert_eq!(strict("/weather/", "/weather"), None);
        assert_eq!(strict("/weather", "/Weather"), None);
        assert_eq!(strict("/weather", "/weather/today"), None);
        assert_eq!(strict("/a/b", "/a"), None);
        assert_eq!(strict("/weather", "weather"), None);
        assert!(!pattern("/weather").is_template());
    }

    #[test]
    fn parameters_take_one_non_empty_segment() {
        assert_eq!(
            strict("/forecast/:city", "/forecast/paris"),
            params(&[("city", "paris")])
        );
        assert_eq!(
            strict("/weather/:country/:city", "/weather/fr/paris"),
            params(&[("country", "fr"), ("city", "paris")])
        );
        assert_eq!(strict("/forecast/:city", "/forecast/"), None);
        assert_eq!(strict("/forecast/:city", "/forecast"), None);
        assert_eq!(strict("/forecast/:city", "/forecast/paris/extra"), None);
        assert_eq!(strict("/forecast/:city", "/forecasts/paris"), None);
        assert_eq!(
            strict("/users/:id/posts", "/users/7/posts"),
            params(&[("id", "7")])
        );
        assert_eq!(strict("/users/:id/posts", "/users/7/comments"), None);
        assert!(pattern("/forecast/:city").is_template());
    }

    #[test]
    fn rest_parameters_take_the_remainder() {
        assert_eq!(
            strict("/files/*path", "/files/a/b.txt"),
            params(&[("path", "a/b.txt")])
        );
        assert_eq!(strict("/files/*path", "/files/a"), params(&[("path", "a")]));
        assert_eq!(strict("/files/*path", "/files/"), None);
        assert_eq!(strict("/files/*path", "/files"), None);
        assert_eq!(pattern("/files/*path").route_template(), "/files/:path");
        assert_eq!(pattern("/users/:id").route_template(), "/users/:id");
    }

    #[test]
    fn segments_are_compared_percent_decoded() {
        assert_eq!(
            strict("/forecast/:city", "/forec%61st/s%C3%A3o%20paulo"),
            params(&[("city", "s%C3%A3o%20paulo")])
        );
        assert_eq!(strict("/caf%C3%A9", "/caf%c3%a9"), params(&[]));
        assert_eq!(strict("/café", "/caf%C3%A9"), params(&[]));
        // An encoded slash stays inside its segment: one parameter, not two segments.
        assert_eq!(
            strict("/forecast/:city", "/forecast/a%2Fb"),
            params(&[("city", "a%2Fb")])
        );
        assert_eq!(strict("/a/b", "/a%2Fb"), None);
        // A lone or malformed escape is a plain character.
        assert_eq!(strict("/100%", "/100%"), params(&[]));
        assert_eq!(strict("/100%zz", "/100%zz"), params(&[]));
        assert_eq!(percent_decode("%4a%4A%g1%"), b"JJ%g1%".to_vec());
    }

    #[test]
    fn dot_segments_are_plain_segments() {
        assert_eq!(
            strict("/forecast/:city", "/forecast/.."),
            params(&[("city", "..")])
        );
        assert_eq!(strict("/forecast/:city", "/forecast/../x"), None);
        assert_eq!(strict("/admin", "/public/../admin"), None);
        assert_eq!(strict("/admin", "/./admin"), None);
    }

    #[test]
    fn loose_matching_ignores_case_and_one_trailing_slash() {
        let forecast = pattern("/forecast/:city");
        let loose = |path: &str| forecast.matches(path, PathMatching::Loose);
        assert_eq!(loose("/Forecast/Paris/"), params(&[("city", "Paris")]));
        assert_eq!(loose("/FORECAST/paris"), params(&[("city", "paris")]));
        assert_eq!(loose("/forecast/paris//"), None);
        assert_eq!(loose("/forecast/"), None);
        assert_eq!(
            pattern("/weather").matches("/WEATHER/", PathMatching::Loose),
            params(&[])
        );
    }

    #[test]
    fn invalid_patterns_are_refused() {
        for bad in [
            "weather",
            "/a?b=1",
            "/a#b",
            "/a//b",
            "/:",
            "/:1st",
            "/:a-b",
            "/*rest/more",
            "/a/:id/:id",
            "/a/../b",
            "/./a",
        ] {
            assert!(RoutePattern::parse(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn the_most_specific_pattern_sorts_first() {
        let mut patterns = [
            pattern("/users/*rest"),
            pattern("/users/:id"),
            pattern("/users/me"),
        ];
        patterns.sort_by(|a, b| a.specificity_cmp(b));
        let order: Vec<&str> = patterns.iter().map(RoutePattern::as_str).collect();
        assert_eq!(order, ["/users/me", "/users/:id", "/users/*rest"]);
        assert!(pattern("/users/:id").same_shape(&pattern("/users/:name")));
        assert!(!pattern("/users/:id").same_shape(&pattern("/users/me")));
    }
}
