use super::*;

fn hooks(json: serde_json::Value) -> Hooks {
    serde_json::from_value(json).unwrap()
}

/// A `/bin/sh -c SCRIPT` hook.
fn sh(script: &str) -> serde_json::Value {
    serde_json::json!({"path": "/bin/sh", "args": ["sh", "-c", script]})
}

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("svm-hooks-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn kinds_are_listed_and_checked() {
    let h = hooks(serde_json::json!({
        "prestart": [sh("true")], "poststop": [sh("true")], "poststart": []
    }));
    assert_eq!(kinds_set(Some(&h)), ["prestart", "poststop"]);
    check(Some(&h)).unwrap();
    check(None).unwrap();
    assert_eq!(
        refuse(Some(&h)),
        Err(HookError::NotInShim("prestart, poststop".into()))
    );
    refuse(Some(&hooks(serde_json::json!({"prestart": []})))).unwrap();
    for kind in ["createContainer", "startContainer"] {
        let h = hooks(serde_json::json!({ kind: [sh("true")] }));
        let e = check(Some(&h)).unwrap_err();
        assert!(matches!(e, HookError::InContainer(k) if k == kind), "{e}");
    }
    let rel = hooks(serde_json::json!({"poststart": [{"path": "bin/true"}]}));
    assert!(matches!(
        check(Some(&rel)),
        Err(HookError::RelativePath { .. })
    ));
    let zero = hooks(serde_json::json!({"prestart": [{"path": "/bin/true", "timeout": 0}]}));
    assert!(matches!(
        check(Some(&zero)),
        Err(HookError::BadTimeout { timeout: 0, .. })
    ));
}

#[test]
fn a_hook_gets_the_state_on_stdin_its_args_env_and_cwd() {
    let d = scratch("stdin");
    let out = d.join("out");
    let script = format!(
        "cat > {o}.state; head -c 9 /proc/$$/cmdline > {o}.argv0; echo \"$0 $X $(pwd)\" > {o}.args; env | grep -c . > {o}.env",
        o = out.display()
    );
    let h = hooks(serde_json::json!({"createRuntime": [{
        "path": "/bin/sh", "args": ["hook-name", "-c", script, "arg1"], "env": ["X=y=z"]
    }]}));
    let state = r#"{"ociVersion":"1.2.0","id":"c","status":"creating","pid":7}"#;
    let failed = run(HookKind::CreateRuntime, Some(&h), state, &d);
    assert!(failed.is_empty(), "{failed:?}");
    let read = |ext: &str| std::fs::read_to_string(d.join(format!("out.{ext}"))).unwrap();
    assert_eq!(read("state"), state);
    assert_eq!(read("argv0"), "hook-name");
    // sh -c's $0 is the argument after the script.
    assert_eq!(read("args").trim(), format!("arg1 y=z {}", d.display()));
    // Only what the hook's env says (sh adds PWD, SHLVL and `_` of its own).
    let vars: usize = read("env").trim().parse().unwrap();
    assert!(
        vars <= 4,
        "{vars} variables: the runtime's environment leaked in"
    );
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn fatal_kinds_stop_at_the_first_failure_warnings_run_on() {
    let d = scratch("order");
    let log = d.join("log");
    let step = |n: &str, code: u8| sh(&format!("echo {n} >> {}; exit {code}", log.display()));
    let h = hooks(serde_json::json!({
        "prestart": [step("p1", 0), step("p2", 3), step("p3", 0)],
        "poststop": [step("s1", 1), step("s2", 0), step("s3", 2)],
    }));
    let failed = run(HookKind::Prestart, Some(&h), "{}", &d);
    assert_eq!(failed.len(), 1);
    assert!(
        failed[0]
            .to_string()
            .contains("prestart hook /bin/sh failed (exit status 3)"),
        "{}",
        failed[0]
    );
    let failed = run(HookKind::Poststop, Some(&h), "{}", &d);
    assert_eq!(failed.len(), 2, "{failed:?}");
    let lines = std::fs::read_to_string(&log).unwrap();
    assert_eq!(lines, "p1\np2\ns1\ns2\ns3\n");
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn a_failure_says_the_last_line_of_stderr_and_a_missing_program_is_named() {
    let d = scratch("stderr");
    let h = hooks(serde_json::json!({"poststart": [
        sh("echo first >&2; echo 'no network for you' >&2; exit 1"),
        {"path": "/nonexistent/hook"},
    ]}));
    let failed = run(HookKind::Poststart, Some(&h), "{}", &d);
    assert_eq!(
        failed[0].to_string(),
        "poststart hook /bin/sh failed (exit status 1): no network for you"
    );
    assert!(
        failed[1]
            .to_string()
            .starts_with("poststart hook /nonexistent/hook cannot run: "),
        "{}",
        failed[1]
    );
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn a_hook_past_its_timeout_is_killed() {
    let d = scratch("timeout");
    let h = hooks(serde_json::json!({"prestart": [
        {"path": "/bin/sh", "args": ["sh", "-c", "exec sleep 30"], "timeout": 1}
    ]}));
    let t = Instant::now();
    let failed = run(HookKind::Prestart, Some(&h), "{}", &d);
    let took = t.elapsed();
    assert_eq!(
        failed,
        [HookError::TimedOut {
            kind: "prestart",
            path: "/bin/sh".into(),
            secs: 1
        }]
    );
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_secs(10),
        "{took:?}"
    );
    // A hook that ignores its stdin and exits at once is fine.
    let quick = hooks(serde_json::json!({"prestart": [{"path": "/bin/true", "timeout": 5}]}));
    let big = "x".repeat(1 << 20);
    assert!(run(HookKind::Prestart, Some(&quick), &big, &d).is_empty());
    let _ = std::fs::remove_dir_all(&d);
}
