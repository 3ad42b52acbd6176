//! The AWS managed policies Fleetport's users attach, served under `arn:aws:iam::aws:policy/…`
//! in every account. The ECR, ELB, task-execution and administrator documents are AWS's current
//! versions; `AmazonECS_FullAccess`, `AmazonEC2ContainerServiceforEC2Role` and `ReadOnlyAccess`
//! carry the statements that concern the services Fleetport serves (ECS, ECR, ELB, IAM, STS,
//! logs) — their statements for other services would grant nothing here.

/// (path and name after `policy`, version ID, creation date, document).
pub struct Managed {
    pub path: &'static str,
    pub name: &'static str,
    pub version: &'static str,
    pub created: &'static str,
    pub document: &'static str,
}

impl Managed {
    pub fn arn(&self) -> String {
        format!("arn:aws:iam::aws:policy{}{}", self.path, self.name)
    }
}

/// The twelve read actions of the ECR read-only policy, which the power-user policy extends.
#[cfg(test)]
const ECR_READ: &str = r#""ecr:GetAuthorizationToken","ecr:BatchCheckLayerAvailability","ecr:GetDownloadUrlForLayer","ecr:GetRepositoryPolicy","ecr:DescribeRepositories","ecr:ListImages","ecr:DescribeImages","ecr:BatchGetImage","ecr:GetLifecyclePolicy","ecr:GetLifecyclePolicyPreview","ecr:ListTagsForResource","ecr:DescribeImageScanFindings""#;

const ECR_READ_ONLY: &str = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":["ecr:GetAuthorizationToken","ecr:BatchCheckLayerAvailability","ecr:GetDownloadUrlForLayer","ecr:GetRepositoryPolicy","ecr:DescribeRepositories","ecr:ListImages","ecr:DescribeImages","ecr:BatchGetImage","ecr:GetLifecyclePolicy","ecr:GetLifecyclePolicyPreview","ecr:ListTagsForResource","ecr:DescribeImageScanFindings"],"Resource":"*"}]}"#;

const ECR_POWER_USER: &str = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":["ecr:GetAuthorizationToken","ecr:BatchCheckLayerAvailability","ecr:GetDownloadUrlForLayer","ecr:GetRepositoryPolicy","ecr:DescribeRepositories","ecr:ListImages","ecr:DescribeImages","ecr:BatchGetImage","ecr:GetLifecyclePolicy","ecr:GetLifecyclePolicyPreview","ecr:ListTagsForResource","ecr:DescribeImageScanFindings","ecr:InitiateLayerUpload","ecr:UploadLayerPart","ecr:CompleteLayerUpload","ecr:PutImage"],"Resource":"*"}]}"#;

pub fn catalog() -> Vec<Managed> {
    vec![
        Managed {
            path: "/",
            name: "AdministratorAccess",
            version: "v1",
            created: "2015-02-06T18:39:46Z",
            document: r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"*","Resource":"*"}]}"#,
        },
        Managed {
            path: "/",
            name: "AmazonEC2ContainerRegistryReadOnly",
            version: "v3",
            created: "2019-12-10T20:56:32Z",
            document: ECR_READ_ONLY,
        },
        Managed {
            path: "/",
            name: "AmazonEC2ContainerRegistryPowerUser",
            version: "v3",
            created: "2019-12-10T20:56:32Z",
            document: ECR_POWER_USER,
        },
        Managed {
            path: "/",
            name: "AmazonEC2ContainerRegistryFullAccess",
            version: "v3",
            created: "2020-12-05T00:00:00Z",
            document: r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":["ecr:*","cloudtrail:LookupEvents"],"Resource":"*"},{"Effect":"Allow","Action":["iam:CreateServiceLinkedRole"],"Resource":"*","Condition":{"StringEquals":{"iam:AWSServiceName":["replication.ecr.amazonaws.com"]}}}]}"#,
        },
        Managed {
            path: "/",
            name: "AmazonEC2ContainerRegistryPullOnly",
            version: "v1",
            created: "2024-10-04T00:00:00Z",
            document: r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":["ecr:GetAuthorizationToken","ecr:BatchGetImage","ecr:GetDownloadUrlForLayer","ecr:BatchImportUpstreamImage"],"Resource":"*"}]}"#,
        },
        Managed {
            path: "/service-role/",
            name: "AmazonECSTaskExecutionRolePolicy",
            version: "v1",
            created: "2017-11-16T18:48:22Z",
            document: r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":["ecr:GetAuthorizationToken","ecr:BatchCheckLayerAvailability","ecr:GetDownloadUrlForLayer","ecr:BatchGetImage","logs:CreateLogStream","logs:PutLogEvents"],"Resource":"*"}]}"#,
        },
        Managed {
            path: "/service-role/",
            name: "AmazonEC2ContainerServiceforEC2Role",
            version: "v10",
            created: "2026-02-12T00:00:00Z",
            document: r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":["ec2:DescribeTags","ecs:CreateCluster","ecs:DeregisterContainerInstance","ecs:DiscoverPollEndpoint","ecs:Poll","ecs:RegisterContainerInstance","ecs:StartTelemetrySession","ecs:UpdateContainerInstancesState","ecs:Submit*","ecr:GetAuthorizationToken","ecr:BatchCheckLayerAvailability","ecr:GetDownloadUrlForLayer","ecr:BatchGetImage","logs:CreateLogStream","logs:PutLogEvents"],"Resource":"*"},{"Effect":"Allow","Action":"ecs:TagResource","Resource":"*","Condition":{"StringEquals":{"ecs:CreateAction":["CreateCluster","RegisterContainerInstance"]}}},{"Effect":"Allow","Action":"ecs:ListTagsForResource","Resource":["arn:aws:ecs:*:*:task/*/*","arn:aws:ecs:*:*:container-instance/*/*"]}]}"#,
        },
        Managed {
            path: "/",
            name: "AmazonECS_FullAccess",
            version: "v21",
            created: "2024-08-13T00:00:00Z",
            document: r#"{"Version":"2012-10-17","Statement":[{"Sid":"ECSIntegrationsManagementPolicy","Effect":"Allow","Action":["ecs:*","elasticloadbalancing:CreateListener","elasticloadbalancing:CreateLoadBalancer","elasticloadbalancing:CreateRule","elasticloadbalancing:CreateTargetGroup","elasticloadbalancing:DeleteListener","elasticloadbalancing:DeleteLoadBalancer","elasticloadbalancing:DeleteRule","elasticloadbalancing:DeleteTargetGroup","elasticloadbalancing:DescribeListeners","elasticloadbalancing:DescribeLoadBalancers","elasticloadbalancing:DescribeRules","elasticloadbalancing:DescribeTargetGroups","iam:ListAttachedRolePolicies","iam:ListInstanceProfiles","iam:ListRoles","logs:CreateLogGroup","logs:DescribeLogGroups","logs:FilterLogEvents"],"Resource":"*"},{"Sid":"PassRoleForECSTasks","Effect":"Allow","Action":"iam:PassRole","Resource":"*","Condition":{"StringLike":{"iam:PassedToService":"ecs-tasks.amazonaws.com"}}},{"Sid":"ServiceLinkedRoleCreation","Effect":"Allow","Action":"iam:CreateServiceLinkedRole","Resource":"*","Condition":{"StringLike":{"iam:AWSServiceName":["ecs.amazonaws.com","autoscaling.amazonaws.com","ecs.application-autoscaling.amazonaws.com","spot.amazonaws.com","spotfleet.amazonaws.com"]}}},{"Sid":"ELBTaggingPolicy","Effect":"Allow","Action":"elasticloadbalancing:AddTags","Resource":"*","Condition":{"StringEquals":{"elasticloadbalancing:CreateAction":["CreateTargetGroup","CreateRule","CreateListener","CreateLoadBalancer"]}}}]}"#,
        },
        Managed {
            path: "/",
            name: "ElasticLoadBalancingFullAccess",
            version: "v9",
            created: "2026-02-23T00:00:00Z",
            document: r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"elasticloadbalancing:*","Resource":"*"},{"Effect":"Allow","Action":["ec2:DescribeAccountAttributes","ec2:DescribeAddresses","ec2:DescribeInternetGateways","ec2:DescribeSecurityGroups","ec2:DescribeSubnets","ec2:DescribeVpcs","ec2:DescribeVpcClassicLink","ec2:DescribeInstances","ec2:DescribeNetworkInterfaces","ec2:DescribeClassicLinkInstances","ec2:DescribeRouteTables","ec2:DescribeCoipPools","ec2:GetCoipPoolUsage","ec2:DescribeVpcPeeringConnections","cognito-idp:DescribeUserPoolClient"],"Resource":"*"},{"Effect":"Allow","Action":"iam:CreateServiceLinkedRole","Resource":"*","Condition":{"StringEquals":{"iam:AWSServiceName":"elasticloadbalancing.amazonaws.com"}}}]}"#,
        },
        Managed {
            path: "/",
            name: "ElasticLoadBalancingReadOnly",
            version: "v3",
            created: "2018-09-20T20:17:09Z",
            document: r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"elasticloadbalancing:Describe*","Resource":"*"},{"Effect":"Allow","Action":["ec2:DescribeInstances","ec2:DescribeClassicLinkInstances","ec2:DescribeSecurityGroups"],"Resource":"*"}]}"#,
        },
        Managed {
            path: "/aws-service-role/",
            name: "AmazonECSServiceRolePolicy",
            version: "v24",
            created: "2025-01-01T00:00:00Z",
            document: r#"{"Version":"2012-10-17","Statement":[{"Sid":"ECSTaskManagement","Effect":"Allow","Action":["ec2:AttachNetworkInterface","ec2:CreateNetworkInterface","ec2:CreateNetworkInterfacePermission","ec2:DeleteNetworkInterface","ec2:DeleteNetworkInterfacePermission","ec2:Describe*","ec2:DetachNetworkInterface","elasticloadbalancing:DeregisterInstancesFromLoadBalancer","elasticloadbalancing:DeregisterTargets","elasticloadbalancing:Describe*","elasticloadbalancing:RegisterInstancesWithLoadBalancer","elasticloadbalancing:RegisterTargets","route53:ChangeResourceRecordSets","route53:CreateHealthCheck","route53:DeleteHealthCheck","route53:Get*","route53:List*","route53:UpdateHealthCheck","servicediscovery:DeregisterInstance","servicediscovery:Get*","servicediscovery:List*","servicediscovery:RegisterInstance","servicediscovery:UpdateInstanceCustomHealthStatus"],"Resource":"*"},{"Sid":"ECSTagging","Effect":"Allow","Action":["ec2:CreateTags"],"Resource":"arn:aws:ec2:*:*:network-interface/*"},{"Sid":"CWLogGroupManagement","Effect":"Allow","Action":["logs:CreateLogGroup","logs:DescribeLogGroups","logs:PutRetentionPolicy"],"Resource":"arn:aws:logs:*:*:log-group:/aws/ecs/*"},{"Sid":"CWLogStreamManagement","Effect":"Allow","Action":["logs:CreateLogStream","logs:DescribeLogStreams","logs:PutLogEvents"],"Resource":"arn:aws:logs:*:*:log-group:/aws/ecs/*:log-stream:*"}]}"#,
        },
        Managed {
            path: "/aws-service-role/",
            name: "AWSElasticLoadBalancingServiceRolePolicy",
            version: "v9",
            created: "2025-01-01T00:00:00Z",
            document: r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":["ec2:DescribeAddresses","ec2:DescribeInstances","ec2:DescribeSubnets","ec2:DescribeSecurityGroups","ec2:DescribeVpcs","ec2:DescribeInternetGateways","ec2:DescribeAccountAttributes","ec2:DescribeClassicLinkInstances","ec2:DescribeVpcClassicLink","ec2:CreateSecurityGroup","ec2:CreateNetworkInterface","ec2:DeleteNetworkInterface","ec2:ModifyNetworkInterfaceAttribute","ec2:AuthorizeSecurityGroupIngress","ec2:AssociateAddress","ec2:DisassociateAddress","ec2:AttachNetworkInterface","ec2:DetachNetworkInterface","ec2:AssignPrivateIpAddresses","ec2:AssignIpv6Addresses","ec2:UnassignIpv6Addresses"],"Resource":"*"}]}"#,
        },
        Managed {
            path: "/aws-service-role/",
            name: "ECRReplicationServiceRolePolicy",
            version: "v1",
            created: "2020-12-04T00:00:00Z",
            document: r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":["ecr:CreateRepository","ecr:ReplicateImage"],"Resource":"*"}]}"#,
        },
        Managed {
            path: "/",
            name: "ReadOnlyAccess",
            version: "v188",
            created: "2026-07-21T00:00:00Z",
            document: r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":["acm:Describe*","acm:Get*","acm:List*","ecr:BatchCheck*","ecr:BatchGet*","ecr:Describe*","ecr:Get*","ecr:List*","ecs:Describe*","ecs:List*","ecs:GetTaskProtection","elasticloadbalancing:Describe*","iam:Generate*","iam:Get*","iam:List*","iam:Simulate*","logs:Describe*","logs:FilterLogEvents","logs:Get*","logs:ListTagsForResource","logs:StartQuery","logs:StopQuery","logs:TestMetricFilter","sts:GetAccessKeyInfo","sts:GetCallerIdentity","sts:GetSessionToken"],"Resource":"*"}]}"#,
        },
    ]
}

/// The managed policy with this ARN.
pub fn find(arn: &str) -> Option<Managed> {
    catalog().into_iter().find(|m| m.arn() == arn)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{Kind, parse};

    #[test]
    fn every_document_parses_and_the_ecr_lists_agree() {
        for m in catalog() {
            assert!(parse(m.document, Kind::Identity).is_ok(), "{}", m.name);
        }
        assert!(ECR_READ_ONLY.contains(ECR_READ));
        assert!(ECR_POWER_USER.contains(ECR_READ));
        assert!(
            find("arn:aws:iam::aws:policy/service-role/AmazonECSTaskExecutionRolePolicy").is_some()
        );
    }
}
