//! The ECS cluster query language, used by `memberOf` placement constraints and by
//! `ListContainerInstances --filter`: `subject operator [argument]` terms joined with
//! `and`/`&&`, `or`/`||`, `not`/`!` and parentheses.
//!
//! Subjects are `agentConnected`, `agentVersion`, `attribute:<name>`, `ec2InstanceId`,
//! `registeredAt`, `runningTasksCount` and `task:group`. Ordering operators apply to the
//! version, date and count subjects (and to numeric attribute values); regular expressions
//! (`=~`, `!~`) must match the whole value, as Java's `String.matches` does in ECS.

use crate::error::{EcsResult, invalid};
use crate::instance::InstanceRecord;

/// What a query can ask about one container instance.
pub struct Facts<'a> {
    pub inst: &'a InstanceRecord,
    pub connected: bool,
    /// Tasks whose desired status is RUNNING on the instance.
    pub running_tasks: u64,
    /// The `group` of each of those tasks.
    pub groups: Vec<&'a str>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Op {
    Eq,
    Ne,
    Gt,
    Ge,
    Lt,
    Le,
    Exists,
    NotExists,
    In,
    NotIn,
    Matches,
    NotMatches,
}

#[derive(Debug, Clone)]
enum Arg {
    None,
    One(String),
    List(Vec<String>),
    Regex(regex_lite::Regex),
}

#[derive(Debug, Clone)]
enum Node {
    Term { subject: String, op: Op, arg: Arg },
    Not(Box<Node>),
    And(Box<Node>, Box<Node>),
    Or(Box<Node>, Box<Node>),
}

/// A parsed cluster query.
#[derive(Debug, Clone)]
pub struct Query(Node);

impl Query {
    pub fn parse(text: &str) -> EcsResult<Self> {
        let fail = |why: &str| invalid(format!("Invalid expression '{text}': {why}"));
        let mut p = Parser { s: text, pos: 0 };
        let node = p.or().map_err(|why| fail(&why))?;
        p.skip_ws();
        if p.pos < p.s.len() {
            return Err(fail(&format!("unexpected '{}'", &p.s[p.pos..])));
        }
        Ok(Self(node))
    }

    pub fn matches(&self, facts: &Facts<'_>) -> bool {
        eval(&self.0, facts)
    }
}

struct Parser<'a> {
    s: &'a str,
    pos: usize,
}

impl Parser<'_> {
    fn rest(&self) -> &str {
        &self.s[self.pos..]
    }

    fn skip_ws(&mut self) {
        let trimmed = self.rest().trim_start();
        self.pos = self.s.len() - trimmed.len();
    }

    /// The next bare word: up to whitespace, a parenthesis or a list bracket.
    fn word(&mut self) -> &str {
        self.skip_ws();
        let start = self.pos;
        let len = self
            .rest()
            .find(|c: char| c.is_whitespace() || "()[".contains(c))
            .unwrap_or(self.rest().len());
        self.pos += len;
        &self.s[start..self.pos]
    }

    fn eat_symbol(&mut self, symbol: &str) -> bool {
        self.skip_ws();
        if self.rest().starts_with(symbol) {
            self.pos += symbol.len();
            return true;
        }
        false
    }

    /// Consumes `keyword` (case-insensitive) when it stands as a whole word.
    fn eat_keyword(&mut self, keyword: &str) -> bool {
        self.skip_ws();
        let rest = self.rest();
        let k = keyword.len();
        let whole = rest.len() >= k
            && rest.is_char_boundary(k)
            && rest[..k].eq_ignore_ascii_case(keyword)
            && rest[k..]
                .chars()
                .next()
                .is_none_or(|c| c.is_whitespace() || c == '(');
        if whole {
            self.pos += k;
        }
        whole
    }

    fn or(&mut self) -> Result<Node, String> {
        let mut left = self.and()?;
        while self.eat_symbol("||") || self.eat_keyword("or") {
            left = Node::Or(Box::new(left), Box::new(self.and()?));
        }
        Ok(left)
    }

    fn and(&mut self) -> Result<Node, String> {
        let mut left = self.unary()?;
        while self.eat_symbol("&&") || self.eat_keyword("and") {
            left = Node::And(Box::new(left), Box::new(self.unary()?));
        }
        Ok(left)
    }

    fn unary(&mut self) -> Result<Node, String> {
        // No subject starts with `!`, so a leading `!` here can only be negation.
        if self.eat_symbol("!") || self.eat_keyword("not") {
            return Ok(Node::Not(Box::new(self.unary()?)));
        }
        if self.eat_symbol("(") {
            let inner = self.or()?;
            if !self.eat_symbol(")") {
                return Err("missing ')'".into());
            }
            return Ok(inner);
        }
        self.term()
    }

    fn term(&mut self) -> Result<Node, String> {
        let subject = self.word().to_string();
        if subject.is_empty() {
            return Err("expected a subject".into());
        }
        let known = [
            "agentConnected",
            "agentVersion",
            "ec2InstanceId",
            "registeredAt",
            "runningTasksCount",
            "task:group",
        ];
        let attribute = subject
            .strip_prefix("attribute:")
            .is_some_and(|n| !n.is_empty());
        if !attribute && !known.contains(&subject.as_str()) {
            return Err(format!("unknown subject '{subject}'"));
        }
        let op_word = self.word().to_string();
        let op = match op_word.as_str() {
            "==" | "equals" => Op::Eq,
            "!=" | "not_equals" => Op::Ne,
            ">" | "greater_than" => Op::Gt,
            ">=" | "greater_than_equal" => Op::Ge,
            "<" | "less_than" => Op::Lt,
            "<=" | "less_than_equal" => Op::Le,
            "exists" => Op::Exists,
            "!exists" | "not_exists" => Op::NotExists,
            "in" => Op::In,
            "!in" | "not_in" => Op::NotIn,
            "=~" | "matches" => Op::Matches,
            "!~" | "not_matches" => Op::NotMatches,
            "" => return Err(format!("expected an operator after '{subject}'")),
            other => return Err(format!("unknown operator '{other}'")),
        };
        let ordered = matches!(op, Op::Gt | Op::Ge | Op::Lt | Op::Le);
        let orderable = attribute
            || matches!(
                subject.as_str(),
                "agentVersion" | "registeredAt" | "runningTasksCount"
            );
        if ordered && !orderable {
            return Err(format!("'{op_word}' does not apply to '{subject}'"));
        }
        let arg = match op {
            Op::Exists | Op::NotExists => Arg::None,
            Op::In | Op::NotIn => Arg::List(self.list()?),
            Op::Matches | Op::NotMatches => {
                let raw = self.regex_arg();
                let re = regex_lite::Regex::new(&format!("^(?:{raw})$"))
                    .map_err(|e| format!("bad regular expression '{raw}': {e}"))?;
                Arg::Regex(re)
            }
            _ => {
                let v = unquote(self.word()).to_string();
                if v.is_empty() {
                    return Err(format!("expected a value after '{op_word}'"));
                }
                if subject == "registeredAt" && parse_date(&v).is_none() {
                    return Err(format!("'{v}' is not a date"));
                }
                if subject == "runningTasksCount" && v.parse::<u64>().is_err() {
                    return Err(format!("'{v}' is not a count"));
                }
                Arg::One(v)
            }
        };
        Ok(Node::Term { subject, op, arg })
    }

    fn list(&mut self) -> Result<Vec<String>, String> {
        if !self.eat_symbol("[") {
            return Err("expected '[' to start a list".into());
        }
        let Some(end) = self.rest().find(']') else {
            return Err("missing ']'".into());
        };
        let items = self.rest()[..end]
            .split(',')
            .map(|v| unquote(v.trim()).to_string())
            .filter(|v| !v.is_empty())
            .collect();
        self.pos += end + 1;
        Ok(items)
    }

    /// A regex runs to the next whitespace; a trailing `)` that the regex itself did not
    /// open closes the enclosing group instead (`not(task:group =~ db.*)`).
    fn regex_arg(&mut self) -> String {
        self.skip_ws();
        let len = self
            .rest()
            .find(char::is_whitespace)
            .unwrap_or(self.rest().len());
        let mut raw = self.rest()[..len].to_string();
        while raw.ends_with(')') && raw.matches(')').count() > raw.matches('(').count() {
            raw.pop();
        }
        self.pos += raw.len();
        unquote(&raw).to_string()
    }
}

fn unquote(v: &str) -> &str {
    for q in ['"', '\''] {
        if let Some(inner) = v.strip_prefix(q).and_then(|s| s.strip_suffix(q)) {
            return inner;
        }
    }
    v
}

/// Dates as ECS accepts them: `2018-06-18T22:28:28+00:00`, `…Z`, `2018-06-18T22:28:28`,
/// `2018-06-18` (the last two in UTC). Returns epoch seconds.
fn parse_date(v: &str) -> Option<f64> {
    if let Ok(ts) = v.parse::<jiff::Timestamp>() {
        return Some(ts.as_second() as f64);
    }
    let dt = match v.parse::<jiff::civil::DateTime>() {
        Ok(dt) => dt,
        Err(_) => v
            .parse::<jiff::civil::Date>()
            .ok()?
            .to_datetime(jiff::civil::Time::midnight()),
    };
    Some(
        dt.to_zoned(jiff::tz::TimeZone::UTC)
            .ok()?
            .timestamp()
            .as_second() as f64,
    )
}

fn version_key(v: &str) -> Vec<u64> {
    v.trim_start_matches('v')
        .split('.')
        .map(|p| p.parse().unwrap_or(0))
        .collect()
}

fn values<'a>(subject: &str, f: &'a Facts<'a>) -> Vec<String> {
    if let Some(name) = subject.strip_prefix("attribute:") {
        return f
            .inst
            .attribute(name)
            .map(String::from)
            .into_iter()
            .collect();
    }
    match subject {
        "agentConnected" => vec![f.connected.to_string()],
        "agentVersion" => f
            .inst
            .version_info
            .get("agentVersion")
            .and_then(|v| v.as_str())
            .map(String::from)
            .into_iter()
            .collect(),
        "ec2InstanceId" => vec![f.inst.ec2_instance_id.clone()],
        "registeredAt" => vec![f.inst.registered_at.to_string()],
        "runningTasksCount" => vec![f.running_tasks.to_string()],
        "task:group" => f.groups.iter().map(|g| g.to_string()).collect(),
        _ => Vec::new(),
    }
}

fn compare(subject: &str, have: &str, want: &str) -> Option<std::cmp::Ordering> {
    match subject {
        "agentVersion" => Some(version_key(have).cmp(&version_key(want))),
        "registeredAt" => have.parse::<f64>().ok()?.partial_cmp(&parse_date(want)?),
        _ => match (have.parse::<f64>(), want.parse::<f64>()) {
            (Ok(a), Ok(b)) => a.partial_cmp(&b),
            _ => Some(have.cmp(want)),
        },
    }
}

fn eval(node: &Node, f: &Facts<'_>) -> bool {
    use std::cmp::Ordering::{Equal, Greater, Less};
    match node {
        Node::Not(n) => !eval(n, f),
        Node::And(a, b) => eval(a, f) && eval(b, f),
        Node::Or(a, b) => eval(a, f) || eval(b, f),
        Node::Term { subject, op, arg } => {
            let have = values(subject, f);
            let cmp_any = |ok: &dyn Fn(std::cmp::Ordering) -> bool| match arg {
                Arg::One(want) => have
                    .iter()
                    .any(|h| compare(subject, h, want).is_some_and(ok)),
                _ => false,
            };
            match (op, arg) {
                (Op::Exists, _) => !have.is_empty(),
                (Op::NotExists, _) => have.is_empty(),
                (Op::Eq, _) => cmp_any(&|o| o == Equal),
                (Op::Ne, _) => !cmp_any(&|o| o == Equal),
                (Op::Gt, _) => cmp_any(&|o| o == Greater),
                (Op::Ge, _) => cmp_any(&|o| o != Less),
                (Op::Lt, _) => cmp_any(&|o| o == Less),
                (Op::Le, _) => cmp_any(&|o| o != Greater),
                (Op::In, Arg::List(l)) => have.iter().any(|h| l.contains(h)),
                (Op::NotIn, Arg::List(l)) => !have.iter().any(|h| l.contains(h)),
                (Op::Matches, Arg::Regex(re)) => have.iter().any(|h| re.is_match(h)),
                (Op::NotMatches, Arg::Regex(re)) => !have.iter().any(|h| re.is_match(h)),
                _ => false,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::instance::test_instance as inst;

    fn check(e: &str, f: &Facts<'_>) -> bool {
        match Query::parse(e) {
            Ok(q) => q.matches(f),
            Err(err) => panic!("{e}: {err:?}"),
        }
    }

    #[test]
    fn the_documented_forms() {
        let i = inst(&[
            ("stack", "prod"),
            ("ecs.instance-type", "t3.small"),
            ("ecs.availability-zone", "us-east-1a"),
            ("weight", "12"),
        ]);
        let f = Facts {
            inst: &i,
            connected: true,
            running_tasks: 2,
            groups: vec!["service:web", "family:batch"],
        };
        let yes = [
            "attribute:stack == prod",
            "attribute:stack exists and attribute:ecs.instance-type in [t3.small, t3.large]",
            "attribute:stack == dev or attribute:stack == prod",
            "attribute:missing !exists",
            "attribute:stack != dev && ec2InstanceId == i-1",
            "attribute:ecs.instance-type =~ t3.*",
            "attribute:ecs.instance-type !~ t2.*",
            "attribute:ecs.availability-zone !in [us-east-1b, us-east-1c]",
            "not(attribute:stack == dev)",
            "!(task:group == service:db)",
            "task:group == service:web",
            "not(task:group =~ service:d.*)",
            "runningTasksCount > 1 and runningTasksCount <= 2",
            "registeredAt >= 2024-02-29 and registeredAt < 2024-03-01T00:00:01Z",
            "registeredAt == 2024-03-01T00:00:00+00:00",
            "registeredAt > 2024-02-29T23:59:59",
            "agentVersion >= 1.9.0 && agentVersion < 1.100",
            "agentConnected == true",
            "attribute:weight > 9",
            "(attribute:stack == dev or attribute:stack == prod) and attribute:ecs.instance-type == t3.small",
            "attribute:stack == \"prod\"",
            "ec2InstanceId =~ (i-1|i-2)",
        ];
        for e in yes {
            assert!(check(e, &f), "{e}");
        }
        let no = [
            "attribute:stack == dev",
            "attribute:stack == dev or attribute:stack == prod and attribute:weight < 5",
            "(attribute:stack == dev or attribute:stack == prod) and attribute:weight < 5",
            "attribute:ecs.instance-type =~ t3",
            "task:group in [service:db]",
            "runningTasksCount == 0",
            "not attribute:stack exists",
        ];
        for e in no {
            assert!(!check(e, &f), "{e}");
        }
    }

    #[test]
    fn malformed_queries_are_refused() {
        for e in [
            "",
            "attribute:stack ==",
            "attribute:stack ~ x",
            "x in nope",
            "colour == red",
            "attribute: == x",
            "(attribute:stack == prod",
            "attribute:stack == prod)",
            "ec2InstanceId > i-1",
            "registeredAt > yesterday",
            "runningTasksCount < many",
            "attribute:a =~ [",
            "attribute:a in [x",
            "attribute:a == b and",
        ] {
            assert!(Query::parse(e).is_err(), "{e}");
        }
    }

    proptest::proptest! {
        #[test]
        fn any_text_parses_or_is_refused_without_panicking(text in "[a-zA-Z:._!=~<>()\\[\\], &|\"0-9*-]{0,60}") {
            let i = inst(&[("a", "1")]);
            let f = Facts { inst: &i, connected: false, running_tasks: 0, groups: vec![] };
            if let Ok(q) = Query::parse(&text) {
                let _ = q.matches(&f);
            }
        }
    }
}
