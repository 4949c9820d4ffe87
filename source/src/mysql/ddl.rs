//! What a MySQL/MariaDB DDL statement in the binlog does to tables ferry carries, beyond what
//! reading the table's definition again shows: renamed tables, renamed columns (`RENAME COLUMN`,
//! `CHANGE`) and dropped tables. Without these a renamed column would look like a dropped
//! column and an added one, and its values would be lost on a replica.
//!
//! A small tokenizer (quoted identifiers, strings, comments, MySQL's executable `/*! … */`
//! comments) feeds a parser of exactly these statement forms; every other statement yields
//! nothing here. Decoding never panics (property-tested).

/// A table, as (database, table).
pub type Table = (String, String);

/// One schema change a statement makes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    RenameTable(Table, Table),
    RenameColumn {
        table: Table,
        from: String,
        to: String,
    },
    DropTable(Table),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    /// A bare word (keyword or identifier) as written.
    Word(String),
    /// A backquoted identifier, unquoted.
    Quoted(String),
    /// A string or number literal; its text does not matter here.
    Literal,
    Punct(char),
}

fn tokenize(sql: &str) -> Vec<Token> {
    let chars: Vec<char> = sql.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match c {
            c if c.is_whitespace() => i += 1,
            '#' => {
                while i < chars.len() && chars[i] != '\n' {
                    i += 1;
                }
            }
            '-' if chars.get(i + 1) == Some(&'-')
                && chars.get(i + 2).is_none_or(|c| c.is_whitespace()) =>
            {
                while i < chars.len() && chars[i] != '\n' {
                    i += 1;
                }
            }
            '/' if chars.get(i + 1) == Some(&'*') => {
                if chars.get(i + 2) == Some(&'!') {
                    // Executable comment: its content is code (after an optional version).
                    i += 3;
                    while i < chars.len() && chars[i].is_ascii_digit() {
                        i += 1;
                    }
                } else {
                    i += 2;
                    while i < chars.len() && !(chars[i] == '*' && chars.get(i + 1) == Some(&'/')) {
                        i += 1;
                    }
                    i += 2;
                }
            }
            '*' if chars.get(i + 1) == Some(&'/') => i += 2,
            '`' => {
                let mut s = String::new();
                i += 1;
                while i < chars.len() {
                    if chars[i] == '`' {
                        if chars.get(i + 1) == Some(&'`') {
                            s.push('`');
                            i += 2;
                            continue;
                        }
                        break;
                    }
                    s.push(chars[i]);
                    i += 1;
                }
                i += 1;
                out.push(Token::Quoted(s));
            }
            '\'' | '"' => {
                let q = c;
                i += 1;
                while i < chars.len() {
                    if chars[i] == '\\' {
                        i += 2;
                        continue;
                    }
                    if chars[i] == q {
                        if chars.get(i + 1) == Some(&q) {
                            i += 2;
                            continue;
                        }
                        break;
                    }
                    i += 1;
                }
                i += 1;
                out.push(Token::Literal);
            }
            c if c.is_alphanumeric() || c == '_' || c == '$' => {
                let start = i;
                while i < chars.len()
                    && (chars[i].is_alphanumeric() || chars[i] == '_' || chars[i] == '$')
                {
                    i += 1;
                }
                let w: String = chars[start..i].iter().collect();
                if w.chars().all(|c| c.is_ascii_digit()) {
                    out.push(Token::Literal);
                } else {
                    out.push(Token::Word(w));
                }
            }
            c => {
                out.push(Token::Punct(c));
                i += 1;
            }
        }
    }
    out
}

struct Parser {
    tokens: Vec<Token>,
    at: usize,
}

impl Parser {
    fn peek_kw(&self, kw: &str) -> bool {
        matches!(self.tokens.get(self.at), Some(Token::Word(w)) if w.eq_ignore_ascii_case(kw))
    }

    fn kw(&mut self, kw: &str) -> bool {
        let yes = self.peek_kw(kw);
        self.at += usize::from(yes);
        yes
    }

    fn punct(&mut self, p: char) -> bool {
        let yes = self.tokens.get(self.at) == Some(&Token::Punct(p));
        self.at += usize::from(yes);
        yes
    }

    fn ident(&mut self) -> Option<String> {
        let t = match self.tokens.get(self.at)? {
            Token::Word(w) | Token::Quoted(w) => w.clone(),
            _ => return None,
        };
        self.at += 1;
        Some(t)
    }

    /// `name` or `db.name`, the database defaulting to the statement's.
    fn table(&mut self, db: &str) -> Option<Table> {
        let first = self.ident()?;
        if self.punct('.') {
            Some((first, self.ident()?))
        } else {
            Some((db.to_owned(), first))
        }
    }

    fn done(&self) -> bool {
        self.at >= self.tokens.len()
    }

    /// Skips to just after the next comma outside parentheses (or to the end).
    fn skip_spec(&mut self) {
        let mut depth = 0usize;
        while let Some(t) = self.tokens.get(self.at) {
            self.at += 1;
            match t {
                Token::Punct('(') => depth += 1,
                Token::Punct(')') => depth = depth.saturating_sub(1),
                Token::Punct(',') if depth == 0 => return,
                _ => {}
            }
        }
    }
}

/// The table renames, column renames and table drops that `sql`, run in database `db`, makes.
pub fn changes(sql: &str, db: &str) -> Vec<Change> {
    let mut p = Parser {
        tokens: tokenize(sql),
        at: 0,
    };
    let mut out = Vec::new();
    if p.kw("RENAME") {
        if !p.kw("TABLE") && !p.kw("TABLES") {
            return out;
        }
        loop {
            let (Some(from), true, Some(to)) = (p.table(db), p.kw("TO"), p.table(db)) else {
                return out;
            };
            out.push(Change::RenameTable(from, to));
            if !p.punct(',') {
                return out;
            }
        }
    }
    if p.kw("DROP") {
        p.kw("TEMPORARY");
        if !p.kw("TABLE") && !p.kw("TABLES") {
            return out;
        }
        if p.kw("IF") && !p.kw("EXISTS") {
            return out;
        }
        while let Some(t) = p.table(db) {
            out.push(Change::DropTable(t));
            if !p.punct(',') {
                break;
            }
        }
        return out;
    }
    if !p.kw("ALTER") {
        return out;
    }
    p.kw("ONLINE");
    p.kw("IGNORE");
    if !p.kw("TABLE") {
        return out;
    }
    if p.kw("IF") && !p.kw("EXISTS") {
        return out;
    }
    let Some(table) = p.table(db) else {
        return out;
    };
    let mut current = table.clone();
    while !p.done() {
        let start = p.at;
        if p.kw("RENAME") {
            if p.kw("COLUMN") {
                let (Some(from), true, Some(to)) = (p.ident(), p.kw("TO"), p.ident()) else {
                    return out;
                };
                out.push(Change::RenameColumn {
                    table: current.clone(),
                    from,
                    to,
                });
            } else if p.peek_kw("INDEX") || p.peek_kw("KEY") {
                // An index rename: nothing to carry.
            } else {
                if !p.kw("TO") {
                    p.kw("AS");
                }
                let Some(to) = p.table(db) else {
                    return out;
                };
                out.push(Change::RenameTable(current.clone(), to.clone()));
                current = to;
            }
        } else if p.kw("CHANGE") {
            p.kw("COLUMN");
            if p.kw("IF") && !p.kw("EXISTS") {
                return out;
            }
            let (Some(from), Some(to)) = (p.ident(), p.ident()) else {
                return out;
            };
            if from != to {
                out.push(Change::RenameColumn {
                    table: current.clone(),
                    from,
                    to,
                });
            }
        }
        p.at = p.at.max(start);
        p.skip_spec();
    }
    // A rename of the table within the statement applies to the columns renamed before it
    // too: MySQL renames the table last.
    if current != table {
        for c in &mut out {
            if let Change::RenameColumn { table: t, .. } = c {
                *t = current.clone();
            }
        }
        // The table rename first, then the columns under the new name.
        out.sort_by_key(|c| !matches!(c, Change::RenameTable(..)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn t(d: &str, n: &str) -> Table {
        (d.into(), n.into())
    }

    fn col(tb: Table, from: &str, to: &str) -> Change {
        Change::RenameColumn {
            table: tb,
            from: from.into(),
            to: to.into(),
        }
    }

    #[test]
    fn renames_of_tables() {
        assert_eq!(
            changes("RENAME TABLE a TO b, other.c TO `d`", "app"),
            [
                Change::RenameTable(t("app", "a"), t("app", "b")),
                Change::RenameTable(t("other", "c"), t("app", "d")),
            ]
        );
        assert_eq!(
            changes("ALTER TABLE `app`.`x` RENAME TO y", "db"),
            [Change::RenameTable(t("app", "x"), t("db", "y"))]
        );
        assert!(changes("ALTER TABLE x ADD COLUMN y int", "db").is_empty());
        assert!(changes("ALTER TABLE x RENAME INDEX a TO b", "db").is_empty());
    }

    #[test]
    fn renames_of_columns_in_every_form() {
        assert_eq!(
            changes("ALTER TABLE items RENAME COLUMN name TO title", "app"),
            [col(t("app", "items"), "name", "title")]
        );
        assert_eq!(
            changes(
                "alter table `app`.`items` change `qty` `quantity` int(11) NOT NULL DEFAULT '0' \
                 COMMENT 'a, b', ADD COLUMN z decimal(10,2), CHANGE COLUMN p p bigint",
                "x"
            ),
            [col(t("app", "items"), "qty", "quantity")]
        );
        assert_eq!(
            changes(
                "ALTER TABLE a /* note */ RENAME COLUMN `we``ird` TO b, RENAME TO c",
                "app"
            ),
            [
                Change::RenameTable(t("app", "a"), t("app", "c")),
                col(t("app", "c"), "we`ird", "b"),
            ]
        );
        assert_eq!(
            changes(
                "/*!40101 ALTER TABLE a CHANGE c d enum('x,y','z') */",
                "app"
            ),
            [col(t("app", "a"), "c", "d")]
        );
    }

    #[test]
    fn drops_of_tables() {
        assert_eq!(
            changes(
                "DROP TABLE IF EXISTS `a`, b.c /* generated by server */",
                "app"
            ),
            [
                Change::DropTable(t("app", "a")),
                Change::DropTable(t("b", "c"))
            ]
        );
        assert!(changes("DROP DATABASE app", "app").is_empty());
        assert!(changes("DROP INDEX i ON t", "app").is_empty());
    }

    proptest! {
        #[test]
        fn arbitrary_text_never_panics(sql in "\\PC{0,120}") {
            let _ = changes(&sql, "db");
        }

        #[test]
        fn statements_with_noise_never_panic(
            head in prop_oneof![Just("ALTER TABLE t "), Just("DROP TABLE "), Just("RENAME TABLE ")],
            rest in "[ a-zA-Z`'\"(),.*/!#-]{0,60}",
        ) {
            let _ = changes(&format!("{head}{rest}"), "db");
        }
    }
}
