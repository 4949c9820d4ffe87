//! Which tables ferry captures: `source.tables` include patterns and `source.exclude` patterns,
//! each `schema.table` where `*` matches any run of characters within its part. A bare `table`
//! pattern matches that table in any schema.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    schema: Option<String>,
    table: String,
}

impl Pattern {
    pub fn parse(s: &str) -> Result<Pattern, String> {
        let (schema, table) = match s.split_once('.') {
            Some((sc, t)) => (Some(sc.to_owned()), t.to_owned()),
            None => (None, s.to_owned()),
        };
        if table.is_empty() || schema.as_deref() == Some("") || table.contains('.') {
            return Err(format!("table pattern {s:?} must be schema.table or table"));
        }
        Ok(Pattern { schema, table })
    }

    pub fn matches(&self, schema: &str, table: &str) -> bool {
        self.schema.as_deref().is_none_or(|p| glob(p, schema)) && glob(&self.table, table)
    }

    /// `Some(schema)` for a `schema.*` pattern.
    pub fn whole_schema(&self) -> Option<&str> {
        match (&self.schema, self.table.as_str()) {
            (Some(s), "*") if !s.contains('*') => Some(s),
            _ => None,
        }
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.schema {
            Some(s) => write!(f, "{s}.{}", self.table),
            None => f.write_str(&self.table),
        }
    }
}

fn glob(pattern: &str, s: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = s.chars().collect();
    let (mut pi, mut ti, mut star, mut mark) = (0, 0, None, 0);
    while ti < t.len() {
        if pi < p.len() && p[pi] != '*' && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(sp) = star {
            pi = sp + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

/// The include and exclude patterns of a source.
#[derive(Debug, Clone, Default)]
pub struct TableFilter {
    include: Vec<Pattern>,
    exclude: Vec<Pattern>,
}

impl TableFilter {
    pub fn new<'a>(
        include: impl IntoIterator<Item = &'a str>,
        exclude: impl IntoIterator<Item = &'a str>,
    ) -> Result<TableFilter, String> {
        Ok(TableFilter {
            include: include
                .into_iter()
                .map(Pattern::parse)
                .collect::<Result<_, _>>()?,
            exclude: exclude
                .into_iter()
                .map(Pattern::parse)
                .collect::<Result<_, _>>()?,
        })
    }

    pub fn includes_all(&self) -> bool {
        self.include.is_empty()
    }

    pub fn include_patterns(&self) -> &[Pattern] {
        &self.include
    }

    pub fn accepts(&self, schema: &str, table: &str) -> bool {
        (self.include.is_empty() || self.include.iter().any(|p| p.matches(schema, table)))
            && !self.exclude.iter().any(|p| p.matches(schema, table))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns() {
        let f = TableFilter::new(["public.*", "audit.log_*", "items"], ["public.tmp_*"]).unwrap();
        assert!(f.accepts("public", "orders"));
        assert!(!f.accepts("public", "tmp_x"));
        assert!(f.accepts("audit", "log_2024"));
        assert!(!f.accepts("audit", "users"));
        assert!(f.accepts("shop", "items"));
        assert!(!f.accepts("shop", "items2"));
        assert_eq!(f.include_patterns()[0].whole_schema(), Some("public"));
        assert_eq!(f.include_patterns()[1].whole_schema(), None);
        assert!(TableFilter::new(["a.b.c"], []).is_err());
        assert!(TableFilter::new([".x"], []).is_err());
        assert!(TableFilter::new([], []).unwrap().accepts("any", "thing"));
        assert!(glob("*a*b", "xxaxxb") && !glob("a*b", "ab c"));
    }
}
