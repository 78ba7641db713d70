//! Route path patterns.

/// A path pattern: literal segments, `*` or `{name}` for one segment, and a
/// trailing `**` for any rest (including none).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathPattern {
    source: String,
    segments: Vec<Segment>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    One,
    Rest,
}

impl PathPattern {
    /// Parses a pattern; it must start with `/`, and `**` may only end it.
    pub fn parse(pattern: &str) -> Result<Self, String> {
        let Some(rest) = pattern.strip_prefix('/') else {
            return Err(format!("route pattern {pattern:?} must start with '/'"));
        };
        let parts: Vec<&str> = if rest.is_empty() {
            Vec::new()
        } else {
            rest.split('/').collect()
        };
        let mut segments = Vec::with_capacity(parts.len());
        for (i, p) in parts.iter().enumerate() {
            let seg = match *p {
                "**" if i + 1 == parts.len() => Segment::Rest,
                "**" => {
                    return Err(format!(
                        "route pattern {pattern:?}: '**' may only end a pattern"
                    ))
                }
                "*" => Segment::One,
                s if s.starts_with('{') && s.ends_with('}') => Segment::One,
                s => Segment::Literal(s.to_owned()),
            };
            segments.push(seg);
        }
        Ok(Self {
            source: pattern.to_owned(),
            segments,
        })
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// Whether `path` (without query) matches.
    pub fn matches(&self, path: &str) -> bool {
        let rest = path.strip_prefix('/').unwrap_or(path);
        let mut parts = if rest.is_empty() {
            Vec::new()
        } else {
            rest.split('/').collect::<Vec<_>>()
        };
        // A trailing slash does not make another route.
        if parts.last() == Some(&"") {
            parts.pop();
        }
        let mut i = 0;
        for seg in &self.segments {
            match seg {
                Segment::Rest => return true,
                Segment::One => {
                    if i >= parts.len() || parts[i].is_empty() {
                        return false;
                    }
                }
                Segment::Literal(l) => {
                    if parts.get(i) != Some(&l.as_str()) {
                        return false;
                    }
                }
            }
            i += 1;
        }
        i == parts.len()
    }
}
