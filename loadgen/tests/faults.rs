//! The `faults:` section of workload files: what parses, and errors that say where and what.

use loadgen::workload::{Fault, FaultAction, Workload, WorkloadError};

fn parse(text: &str) -> Result<Workload, WorkloadError> {
    Workload::from_yaml(text, "test.yaml")
}

fn error(text: &str) -> WorkloadError {
    match parse(text) {
        Ok(w) => panic!("accepted: {w:?}"),
        Err(e) => e,
    }
}

#[test]
fn no_faults_by_default() {
    assert!(parse("name: t\n").unwrap().faults.is_empty());
}

#[test]
fn every_action_parses() {
    let w = parse(
        "name: t
duration_s: 20
cluster: { nodes: 4 }
faults:
  - { at_s: 3.0, action: kill, count: 2 }
  - { at_s: 3, action: kill, nodes: [1, 3] }
  - { at_s: 4, action: pause, count: 1, duration_s: 1.5 }
  - { at_s: 5, action: resume }
  - { at_s: 6, action: restart, nodes: [1] }
  - { at_s: 7, action: add, count: 2 }
  - { at_s: 8, action: remove, nodes: [5] }
  - { at_s: 9, action: forget, nodes: [1] }
",
    )
    .unwrap();
    assert_eq!(w.faults.len(), 8);
    assert_eq!(
        w.faults[0],
        Fault {
            at_s: 3.0,
            action: FaultAction::Kill,
            count: Some(2),
            nodes: None,
            groups: None,
            duration_s: None
        }
    );
    assert_eq!(w.faults[1].nodes, Some(vec![1, 3]));
    assert_eq!(w.faults[2].duration_s, Some(1.5));
    assert_eq!(w.faults[3].action, FaultAction::Resume);
    assert_eq!(w.faults[3].count_or_default(), 1);
    assert_eq!(w.faults[5].action, FaultAction::Add);
    // Node 5 exists at 8 s: two were added at 7 s.
    assert_eq!(w.faults[6].nodes, Some(vec![5]));
    assert_eq!(w.faults[7].action, FaultAction::Forget);
}

#[test]
fn partitions_and_heals_parse() {
    let w = parse(
        "name: t
duration_s: 20
cluster: { nodes: 5 }
faults:
  - { at_s: 2, action: partition, groups: [[0, 1, 2], [3, 4]] }
  - { at_s: 6, action: heal }
  - { at_s: 8, action: add }
  - { at_s: 9, action: partition, groups: [[5], [0, 1]], duration_s: 3.5 }
",
    )
    .unwrap();
    assert!(w.has_partitions());
    assert_eq!(w.faults[0].action, FaultAction::Partition);
    assert_eq!(w.faults[0].groups, Some(vec![vec![0, 1, 2], vec![3, 4]]));
    assert_eq!(w.faults[1], Fault::new(6.0, FaultAction::Heal));
    // Node 5 exists at 9 s (added at 8 s); nodes 2 to 4 are on no side.
    assert_eq!(w.faults[3].groups, Some(vec![vec![5], vec![0, 1]]));
    assert_eq!(w.faults[3].duration_s, Some(3.5));
    assert!(!parse("name: t\nfaults:\n  - { at_s: 1, action: kill }\n")
        .unwrap()
        .has_partitions());
}

#[test]
fn an_unknown_action_or_field_has_a_line_and_column() {
    let e = error("name: t\nfaults:\n  - { at_s: 1, action: explode }\n");
    assert_eq!(e.line, Some(3), "{e}");
    assert!(e.column.is_some(), "{e}");
    assert!(e.message.contains("explode"), "{e}");
    assert!(e.message.contains("kill"), "{e}");

    let e = error("name: t\nfaults:\n  - at_s: 1\n    action: kill\n    cuont: 2\n");
    assert_eq!(e.line, Some(5), "{e}");
    assert!(e.message.contains("cuont"), "{e}");

    let e = error("name: t\nfaults:\n  - { action: kill }\n");
    assert!(e.message.contains("at_s"), "{e}");
    assert!(e.line.is_some(), "{e}");
}

#[test]
fn validation_errors_name_the_fault_and_the_problem() {
    let cases = [
        ("{ at_s: 1, action: kill, count: 0 }", "count must be at least 1"),
        ("{ at_s: 10, action: kill }", "at_s must be within the run"),
        ("{ at_s: -1, action: kill }", "at_s must be within the run"),
        (
            "{ at_s: 1, action: kill, nodes: [5] }",
            "node index 5 is out of range",
        ),
        ("{ at_s: 1, action: kill, nodes: [] }", "at least one node"),
        (
            "{ at_s: 1, action: kill, count: 1, nodes: [0] }",
            "either count or nodes",
        ),
        (
            "{ at_s: 1, action: kill, duration_s: 2 }",
            "duration_s is for pause and partition only",
        ),
        (
            "{ at_s: 1, action: pause, duration_s: 0 }",
            "duration_s must be a positive number",
        ),
        ("{ at_s: 1, action: add, nodes: [1] }", "give count, not nodes"),
        ("{ at_s: 1, action: partition }", "a partition needs its groups"),
        (
            "{ at_s: 1, action: partition, groups: [[0, 1, 2, 3]] }",
            "at least two groups",
        ),
        (
            "{ at_s: 1, action: partition, groups: [[0, 1], []] }",
            "names no node",
        ),
        (
            "{ at_s: 1, action: partition, groups: [[0, 1], [1, 2]] }",
            "node 1 is in two groups",
        ),
        (
            "{ at_s: 1, action: partition, groups: [[0, 1], [5]] }",
            "node 5 does not exist",
        ),
        (
            "{ at_s: 1, action: partition, groups: [[0], [1]], count: 2 }",
            "names groups, not count or nodes",
        ),
        (
            "{ at_s: 1, action: partition, groups: [[0], [1]], duration_s: -1 }",
            "duration_s must be a positive number",
        ),
        (
            "{ at_s: 1, action: heal, nodes: [1] }",
            "give no count, nodes or groups",
        ),
        (
            "{ at_s: 1, action: heal, duration_s: 1 }",
            "duration_s is for pause and partition only",
        ),
        (
            "{ at_s: 1, action: kill, groups: [[0], [1]] }",
            "groups is for partition only",
        ),
    ];
    for (fault, want) in cases {
        let text = format!("name: t\nduration_s: 10\ncluster: {{ nodes: 4 }}\nfaults:\n  - {{ at_s: 0, action: add }}\n  - {fault}\n");
        let e = error(&text);
        assert!(e.message.contains(want), "{fault}: {e}");
        assert!(e.message.contains("faults[1]"), "{fault}: {e}");
    }
    // An index that only exists after an add fires.
    let e = error(
        "name: t\ncluster: { nodes: 2 }\nfaults:\n  - { at_s: 1, action: kill, nodes: [2] }\n  - { at_s: 2, action: add }\n",
    );
    assert!(e.message.contains("node index 2 is out of range"), "{e}");
}
