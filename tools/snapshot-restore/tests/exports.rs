//! `rds-export` and `dynamodb-export` against moto, followed to completion and to failure.

use harness::moto;

use moto::{events, tool};

fn rds() -> aws_sdk_rds::Client {
    aws_sdk_rds::Client::new(&moto::sdk_config())
}

fn dynamodb() -> aws_sdk_dynamodb::Client {
    aws_sdk_dynamodb::Client::new(&moto::sdk_config())
}

fn unique(label: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "{label}-{}-{nanos}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    )
}

/// A DB instance and a snapshot of it; the snapshot's ARN.
fn rds_snapshot() -> String {
    let db = unique("db");
    harness::block_on(
        rds()
            .create_db_instance()
            .db_instance_identifier(&db)
            .db_instance_class("db.t3.micro")
            .engine("postgres")
            .allocated_storage(20)
            .master_username("admin")
            .master_user_password("password123")
            .send(),
    )
    .expect("CreateDBInstance");
    let snapshot = harness::block_on(
        rds()
            .create_db_snapshot()
            .db_instance_identifier(&db)
            .db_snapshot_identifier(unique("snap"))
            .send(),
    )
    .expect("CreateDBSnapshot");
    snapshot
        .db_snapshot()
        .and_then(|s| s.db_snapshot_arn())
        .expect("arn")
        .to_string()
}

const ROLE: &str = "arn:aws:iam::123456789012:role/export";

#[test]
fn rds_export_is_followed_to_completion() {
    let arn = rds_snapshot();
    let out = tool("snapshot-restore")
        .args([
            "rds-export",
            "--snapshot-arn",
            &arn,
            "--bucket",
            "exports",
            "--prefix",
            "rds",
        ])
        .args([
            "--iam-role-arn",
            ROLE,
            "--kms-key-id",
            "alias/export",
            "--poll-interval",
            "100ms",
        ])
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let events = events(&out.stdout);
    assert_eq!(
        events.first().map(|e| e["event"].clone()),
        Some("export_started".into())
    );
    let task_id = events[0]["task_id"].as_str().expect("task_id").to_string();
    assert!(task_id.starts_with("s3pipe-"), "{task_id}");
    assert_eq!(events[0]["source_arn"], arn.as_str());
    let last = events.last().expect("events");
    assert_eq!(last["event"], "export_complete");
    assert_eq!(last["status"], "COMPLETE");
    assert_eq!(last["task_id"], task_id.as_str());
    assert_eq!(last["bucket"], "exports");
}

#[test]
fn rds_export_canceled_is_a_failure() {
    let arn = rds_snapshot();
    let task_id = unique("cancel").replace('_', "-");
    let out = tool("snapshot-restore")
        .args([
            "rds-export",
            "--snapshot-arn",
            &arn,
            "--bucket",
            "exports",
            "--task-id",
            &task_id,
        ])
        .args(["--iam-role-arn", ROLE, "--kms-key-id", "k", "--no-wait"])
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let started = events(&out.stdout);
    assert_eq!(started.len(), 1, "only export_started with --no-wait");
    assert_eq!(started[0]["task_id"], task_id.as_str());

    harness::block_on(
        rds()
            .cancel_export_task()
            .export_task_identifier(&task_id)
            .send(),
    )
    .expect("CancelExportTask");
    let out = tool("snapshot-restore")
        .args([
            "rds-export",
            "--follow",
            &task_id,
            "--poll-interval",
            "100ms",
        ])
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.starts_with(&format!(
            "snapshot-restore: export {task_id} ended CANCELED"
        )),
        "{stderr}"
    );
    let events = events(&out.stdout);
    assert_eq!(
        events.last().map(|e| e["event"].clone()),
        Some("export_failed".into())
    );
    assert_eq!(
        events.last().map(|e| e["status"].clone()),
        Some("CANCELED".into())
    );
}

#[test]
fn rds_export_of_a_missing_snapshot_is_not_found() {
    let out = tool("snapshot-restore")
        .args([
            "rds-export",
            "--snapshot-arn",
            "arn:aws:rds:us-east-1:123456789012:snapshot:nope",
        ])
        .args([
            "--bucket",
            "exports",
            "--iam-role-arn",
            ROLE,
            "--kms-key-id",
            "k",
        ])
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(
        stderr.starts_with("snapshot-restore: cannot start exporting"),
        "{stderr}"
    );
}

/// A table with point-in-time recovery on and one item; its ARN.
fn table() -> String {
    use aws_sdk_dynamodb::types::{
        AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType,
        PointInTimeRecoverySpecification, ScalarAttributeType,
    };
    let name = unique("table");
    let client = dynamodb();
    let created = harness::block_on(
        client
            .create_table()
            .table_name(&name)
            .billing_mode(BillingMode::PayPerRequest)
            .attribute_definitions(
                AttributeDefinition::builder()
                    .attribute_name("id")
                    .attribute_type(ScalarAttributeType::S)
                    .build()
                    .expect("attribute"),
            )
            .key_schema(
                KeySchemaElement::builder()
                    .attribute_name("id")
                    .key_type(KeyType::Hash)
                    .build()
                    .expect("key"),
            )
            .send(),
    )
    .expect("CreateTable");
    harness::block_on(
        client
            .update_continuous_backups()
            .table_name(&name)
            .point_in_time_recovery_specification(
                PointInTimeRecoverySpecification::builder()
                    .point_in_time_recovery_enabled(true)
                    .build()
                    .expect("pitr"),
            )
            .send(),
    )
    .expect("UpdateContinuousBackups");
    harness::block_on(
        client
            .put_item()
            .table_name(&name)
            .item("id", AttributeValue::S("one".into()))
            .send(),
    )
    .expect("PutItem");
    created
        .table_description()
        .and_then(|t| t.table_arn())
        .expect("arn")
        .to_string()
}

fn moto_s3() -> aws_sdk_s3::Client {
    let config = aws_sdk_s3::config::Builder::from(&moto::sdk_config())
        .force_path_style(true)
        .build();
    aws_sdk_s3::Client::from_conf(config)
}

#[test]
fn dynamodb_export_is_followed_to_completion() {
    let arn = table();
    let bucket = unique("exports").to_lowercase();
    harness::block_on(moto_s3().create_bucket().bucket(&bucket).send()).expect("CreateBucket");
    let out = tool("snapshot-restore")
        .args([
            "dynamodb-export",
            "--table-arn",
            &arn,
            "--bucket",
            &bucket,
            "--prefix",
            "ddb",
        ])
        .args([
            "--export-time",
            "2026-11-01T00:00:00Z",
            "--poll-interval",
            "100ms",
        ])
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let events = events(&out.stdout);
    assert_eq!(events[0]["event"], "export_started");
    assert_eq!(events[0]["table_arn"], arn.as_str());
    let last = events.last().expect("events");
    assert_eq!(last["event"], "export_complete");
    assert_eq!(last["status"], "COMPLETED");
    assert_eq!(last["item_count"], 1);
    let listed = harness::block_on(
        moto_s3()
            .list_objects_v2()
            .bucket(&bucket)
            .prefix("ddb/AWSDynamoDB/")
            .send(),
    )
    .expect("ListObjectsV2");
    assert!(
        listed
            .contents()
            .iter()
            .any(|o| o.key().is_some_and(|k| k.ends_with(".gz"))),
        "the export wrote its data file"
    );
}

#[test]
fn dynamodb_export_failure_is_reported() {
    let arn = table();
    let out = tool("snapshot-restore")
        .args([
            "dynamodb-export",
            "--table-arn",
            &arn,
            "--bucket",
            "no-such-bucket-s3pipe",
        ])
        // moto answers HTTP 500 without an S3Prefix (optional on AWS).
        .args(["--prefix", "ddb", "--poll-interval", "100ms"])
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("ended FAILED: S3NoSuchBucket"), "{stderr}");
    let events = events(&out.stdout);
    let last = events.last().expect("events");
    assert_eq!(last["event"], "export_failed");
    assert_eq!(last["status"], "FAILED");
}

#[test]
fn bad_export_time_is_a_usage_error() {
    let out = tool("snapshot-restore")
        .args([
            "dynamodb-export",
            "--table-arn",
            "arn:x",
            "--bucket",
            "b",
            "--export-time",
            "yesterday",
        ])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--export-time 'yesterday'"));
}
