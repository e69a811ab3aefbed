//! Workload files: defaults, the accepted spellings, and errors that say where and what.

use loadgen::workload::{Distribution, Entry, PartitionPolicy, ValueSize, Workload, WorkloadError};

fn parse(text: &str) -> Result<Workload, WorkloadError> {
    Workload::from_yaml(text, "test.yaml")
}

#[test]
fn a_name_alone_gets_every_default() {
    let w = parse("name: t\n").unwrap();
    assert_eq!(w.duration_s, 10.0);
    assert_eq!(w.rate_per_s, None);
    assert!(!w.is_open_loop());
    assert_eq!(w.value_bytes, ValueSize::Fixed(100));
    assert_eq!(w.distribution, Distribution::Uniform);
    assert_eq!(w.entry, Entry::Random);
    assert_eq!(w.cluster.nodes, 8);
    assert_eq!(w.cluster.node.store, "memory");
}

#[test]
fn every_shipped_workload_parses() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../workloads");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let text = std::fs::read_to_string(&path).unwrap();
            assert!(
                text.starts_with('#'),
                "{} must start with a comment",
                path.display()
            );
            Workload::load(&path).unwrap_or_else(|e| panic!("{e}"));
            seen += 1;
        }
    }
    assert!(seen >= 6, "only {seen} workloads in {}", dir.display());
}

#[test]
fn distributions_by_name_or_with_parameters() {
    let d = |s: &str| {
        parse(&format!("name: t\ndistribution: {s}\n"))
            .unwrap()
            .distribution
    };
    assert_eq!(d("zipfian"), Distribution::Zipfian { theta: 0.99 });
    assert_eq!(d("{zipfian: {theta: 0.5}}"), Distribution::Zipfian { theta: 0.5 });
    assert_eq!(
        d("hotspot"),
        Distribution::Hotspot {
            hot_data_fraction: 0.2,
            hot_op_fraction: 0.8
        }
    );
    assert_eq!(
        d("{hotspot: {hot_op_fraction: 0.9}}"),
        Distribution::Hotspot {
            hot_data_fraction: 0.2,
            hot_op_fraction: 0.9
        }
    );
    assert_eq!(d("hotkey"), Distribution::Hotkey);
    assert_eq!(d("sequential"), Distribution::Sequential);
    assert_eq!(d("latest"), Distribution::Latest);
}

#[test]
fn value_size_fixed_or_range() {
    let v = |s: &str| {
        parse(&format!("name: t\nvalue_bytes: {s}\n"))
            .unwrap()
            .value_bytes
    };
    assert_eq!(v("64"), ValueSize::Fixed(64));
    assert_eq!(v("{min: 40, max: 90}"), ValueSize::Range { min: 40, max: 90 });
}

#[test]
fn an_unknown_field_is_reported_with_its_line_and_column() {
    let e = parse("name: t\nduration_s: 2\nmix:\n  get: 1\n  gets: 2\n").unwrap_err();
    assert_eq!((e.line, e.column), (Some(5), Some(3)), "{e}");
    assert!(e.message.contains("unknown field `gets`"), "{e}");
    assert!(e.to_string().starts_with("test.yaml: line 5, column 3: "), "{e}");
}

#[test]
fn an_unknown_top_level_field_is_reported() {
    let e = parse("name: t\nthreds: 4\n").unwrap_err();
    assert_eq!((e.line, e.column), (Some(2), Some(1)), "{e}");
    assert!(e.message.contains("unknown field `threds`"), "{e}");
}

#[test]
fn a_bad_type_is_reported_with_its_line_and_column() {
    let e = parse("name: t\nconnections: many\n").unwrap_err();
    assert_eq!((e.line, e.column), (Some(2), Some(14)), "{e}");
    assert!(e.message.contains("invalid type"), "{e}");
}

#[test]
fn a_bad_distribution_parameter_is_reported_where_it_is() {
    let e = parse("name: t\ndistribution:\n  zipfian:\n    theta: high\n").unwrap_err();
    assert_eq!(e.line, Some(4), "{e}");
    let e = parse("name: t\ndistribution:\n  zipfian:\n    tehta: 0.5\n").unwrap_err();
    assert_eq!(e.line, Some(4), "{e}");
    assert!(e.message.contains("unknown field `tehta`"), "{e}");
    let e = parse("name: t\ndistribution: pareto\n").unwrap_err();
    assert_eq!(e.line, Some(2), "{e}");
    assert!(e.message.contains("unknown variant `pareto`"), "{e}");
}

#[test]
fn a_bad_value_size_map_is_reported_where_it_is() {
    let e = parse("name: t\nvalue_bytes:\n  min: 40\n  maximum: 90\n").unwrap_err();
    assert_eq!(e.line, Some(4), "{e}");
}

#[test]
fn a_missing_name_is_an_error() {
    let e = parse("duration_s: 2\n").unwrap_err();
    assert!(e.message.contains("missing field `name`"), "{e}");
}

#[test]
fn values_the_types_allow_but_the_run_cannot_use_are_rejected() {
    for (text, needle) in [
        ("name: t\ndistribution: {zipfian: {theta: 1.0}}\n", "theta"),
        ("name: t\nduration_s: 0\n", "duration_s"),
        ("name: t\nkeys: 1000\nkey_bytes: 3\n", "key_bytes"),
        ("name: t\nvalue_bytes: 8\n", "value_bytes"),
        ("name: t\nmix: {get: 0}\n", "mix"),
        ("name: t\nthreads: 0\n", "threads"),
        ("name: t\ncluster: {routing: base:1}\n", "cluster.routing"),
        ("name: t\ncluster: {routing: twohop}\n", "cluster.routing"),
    ] {
        let e = parse(text).unwrap_err();
        assert!(e.message.contains(needle), "{text:?}: {e}");
    }
}

#[test]
fn the_cluster_section_becomes_node_arguments() {
    let w = parse("name: t\ncluster: {nodes: 3, replicas: 1, ack: one, stabilize_ms: 100}\n").unwrap();
    assert_eq!(
        w.cluster.node_args(),
        [
            "--stabilize-ms",
            "100",
            "--store",
            "memory",
            "--replicas",
            "1",
            "--ack",
            "one"
        ]
    );
    let w = parse("name: t\ncluster: {routing: 'base:4', cache: 1024}\nentry: owner\n").unwrap();
    let args = w.cluster.node_args();
    assert!(args.ends_with(&[
        "--routing".into(),
        "base:4".into(),
        "--cache".into(),
        "1024".into()
    ]));
    let e = parse("name: t\ncluster: {ack: some}\n").unwrap_err();
    assert!(e.message.contains("unknown variant `some`"), "{e}");
}

#[test]
fn partition_policy_clock_offset_and_tombstone_grace_go_to_the_nodes() {
    let w = parse("name: t\n").unwrap();
    assert_eq!(
        w.cluster.policy(),
        PartitionPolicy::Consistent,
        "the node's default"
    );
    assert!(!w.cluster.node_args().iter().any(|a| a.starts_with("--partition")));
    let w = parse(
        "name: t\ncluster:\n  partition_policy: available\n  max_clock_offset_ms: 250\n  tombstone_grace_ms: 5000\n",
    )
    .unwrap();
    assert_eq!(w.cluster.policy(), PartitionPolicy::Available);
    assert!(w.cluster.node_args().ends_with(&[
        "--partition-policy".into(),
        "available".into(),
        "--max-clock-offset-ms".into(),
        "250".into(),
        "--tombstone-grace-ms".into(),
        "5000".into()
    ]));
    let e = parse("name: t\ncluster:\n  nodes: 3\n  partition_policy: eventual\n").unwrap_err();
    assert_eq!((e.line, e.column), (Some(4), Some(21)), "{e}");
    assert!(e.message.contains("unknown variant `eventual`"), "{e}");
    assert!(
        e.message.contains("consistent") && e.message.contains("available"),
        "{e}"
    );
    let e = parse("name: t\ncluster:\n  max_clock_offset_ms: -5\n").unwrap_err();
    assert_eq!(e.line, Some(3), "{e}");
}
