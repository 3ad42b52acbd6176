//! ECS ARNs (the long format every new resource uses) and resolving the names-or-ARNs that ECS
//! accepts wherever it takes an identifier.

/// The partition, region and account ARNs are built for.
#[derive(Debug, Clone)]
pub struct Scope {
    pub region: String,
    pub account: String,
}

impl Scope {
    pub fn arn(&self, resource: &str) -> String {
        format!("arn:aws:ecs:{}:{}:{resource}", self.region, self.account)
    }

    pub fn cluster_arn(&self, name: &str) -> String {
        self.arn(&format!("cluster/{name}"))
    }

    pub fn task_definition_arn(&self, family: &str, revision: u64) -> String {
        self.arn(&format!("task-definition/{family}:{revision}"))
    }

    /// For an ECS ARN of this region and account, the resource part (`cluster/demo`).
    /// `None` for ARNs of other services, regions or accounts.
    pub fn resource_of<'a>(&self, arn: &'a str) -> Option<&'a str> {
        let rest = arn.strip_prefix("arn:aws:ecs:")?;
        let rest = rest.strip_prefix(self.region.as_str())?.strip_prefix(':')?;
        rest.strip_prefix(self.account.as_str())?.strip_prefix(':')
    }

    /// A cluster reference (name or ARN) → the name; `None` if it is an ARN that cannot be ours.
    pub fn cluster_name<'a>(&self, reference: &'a str) -> Option<&'a str> {
        if reference.starts_with("arn:") {
            self.resource_of(reference)?.strip_prefix("cluster/")
        } else {
            Some(reference)
        }
    }
}

/// ECS resource names: 1–255 letters, digits, hyphens and underscores.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_references() {
        let s = Scope {
            region: "us-east-1".into(),
            account: "123456789012".into(),
        };
        assert_eq!(
            s.cluster_arn("demo"),
            "arn:aws:ecs:us-east-1:123456789012:cluster/demo"
        );
        assert_eq!(s.cluster_name("demo"), Some("demo"));
        assert_eq!(
            s.cluster_name("arn:aws:ecs:us-east-1:123456789012:cluster/demo"),
            Some("demo")
        );
        assert_eq!(
            s.cluster_name("arn:aws:ecs:eu-west-1:123456789012:cluster/demo"),
            None
        );
        assert!(
            valid_name("a-b_C9")
                && !valid_name("a b")
                && !valid_name("")
                && !valid_name(&"x".repeat(256))
        );
    }
}
