//! The admin API's routing, keys and status codes, against a fake runtime.

use std::sync::Mutex;

use super::*;
use crate::state::Phase;

#[derive(Default)]
struct Fake {
    calls: Mutex<Vec<String>>,
    fail: Option<CommandError>,
}

impl Fake {
    fn result<T>(&self, call: String, ok: T) -> Result<T, CommandError> {
        self.calls.lock().unwrap().push(call);
        match &self.fail {
            Some(e) => Err(e.clone()),
            None => Ok(ok),
        }
    }
}

impl Runtime for Fake {
    fn snapshot(&self) -> Snapshot {
        Snapshot {
            stopping: false,
            models: vec![crate::supervisor::machine::tests::test_status()],
            table: Default::default(),
        }
    }
    async fn command(&self, c: Command) -> Result<Accepted, CommandError> {
        let model = match &c {
            Command::Restart(n) | Command::Stop(n) | Command::Start(n) => n.clone(),
        };
        self.result(
            format!("{c:?}"),
            Accepted {
                model,
                state: Phase::Ready,
            },
        )
    }
    async fn add_adapter(&self, model: &str, name: &str, path: &str) -> Result<(), CommandError> {
        self.result(format!("add {model} {name} {path}"), ())
    }
    async fn remove_adapter(&self, model: &str, adapter: &str) -> Result<(), CommandError> {
        self.result(format!("remove {model} {adapter}"), ())
    }
    async fn reload(&self) -> Result<ReloadReport, CommandError> {
        self.result("reload".into(), ReloadReport::default())
    }
}

const KEY: &[u8] = b"Bearer sekrit";

fn admin(fail: Option<CommandError>) -> Admin<Fake> {
    Admin::new(
        Some("sekrit".into()),
        Fake {
            fail,
            ..Default::default()
        },
    )
}

#[tokio::test]
async fn without_a_key_every_admin_path_is_404() {
    let a = Admin::new(None, Fake::default());
    for (m, p) in [
        ("GET", "/admin/models"),
        ("POST", "/admin/reload"),
        ("GET", "/admin"),
    ] {
        assert_eq!(a.handle(m, p, Some(KEY), b"").await.status, 404);
    }
    assert!(a.runtime().calls.lock().unwrap().is_empty());
}

#[tokio::test]
async fn the_admin_key_is_required() {
    let a = admin(None);
    assert_eq!(
        a.handle("GET", "/admin/models", None, b"").await.status,
        401
    );
    let wrong = a
        .handle("POST", "/admin/reload", Some(b"Bearer other"), b"")
        .await;
    assert_eq!(wrong.status, 401);
    assert_eq!(wrong.body.unwrap()["error"]["type"], "authentication_error");
    assert!(a.runtime().calls.lock().unwrap().is_empty());
    assert_eq!(
        a.handle("GET", "/admin/models", Some(KEY), b"")
            .await
            .status,
        200
    );
}

#[tokio::test]
async fn calls_route_to_commands_with_their_status_codes() {
    let a = admin(None);
    let r = a
        .handle("POST", "/admin/models/m/restart", Some(KEY), b"")
        .await;
    assert_eq!(r.status, 202);
    assert_eq!(
        r.body.unwrap(),
        json!({"model": "m", "action": "restart", "state": "ready"})
    );
    assert_eq!(
        a.handle("POST", "/admin/models/org%2Fm/stop/", Some(KEY), b"")
            .await
            .status,
        202
    );
    assert_eq!(
        a.handle("POST", "/admin/models/m/start", Some(KEY), b"")
            .await
            .status,
        202
    );
    let body = br#"{"name": "sql", "path": "adapters/sql"}"#;
    assert_eq!(
        a.handle("POST", "/admin/models/m/adapters", Some(KEY), body)
            .await
            .status,
        201
    );
    let del = a
        .handle("DELETE", "/admin/models/m/adapters/sql", Some(KEY), b"")
        .await;
    assert_eq!((del.status, del.body), (204, None));
    assert_eq!(
        a.handle("POST", "/admin/reload", Some(KEY), b"")
            .await
            .status,
        200
    );
    assert_eq!(
        *a.runtime().calls.lock().unwrap(),
        [
            "Restart(\"m\")",
            "Stop(\"org/m\")",
            "Start(\"m\")",
            "add m sql adapters/sql",
            "remove m sql",
            "reload"
        ]
    );
}

#[tokio::test]
async fn wrong_methods_paths_and_bodies() {
    let a = admin(None);
    let r = a.handle("GET", "/admin/reload", Some(KEY), b"").await;
    assert_eq!((r.status, r.allow), (405, Some("POST")));
    let r = a.handle("POST", "/admin/models", Some(KEY), b"").await;
    assert_eq!((r.status, r.allow), (405, Some("GET")));
    assert_eq!(
        a.handle("GET", "/admin/nothing", Some(KEY), b"")
            .await
            .status,
        404
    );
    assert_eq!(
        a.handle("POST", "/admin/models/m/jump", Some(KEY), b"")
            .await
            .status,
        404
    );
    assert_eq!(
        a.handle("POST", "/admin/models/%zz/stop", Some(KEY), b"")
            .await
            .status,
        400
    );
    for body in [
        &b"not json"[..],
        br#"{"name": "x"}"#,
        br#"{"name": " ", "path": "p"}"#,
    ] {
        assert_eq!(
            a.handle("POST", "/admin/models/m/adapters", Some(KEY), body)
                .await
                .status,
            400,
            "{}",
            String::from_utf8_lossy(body)
        );
    }
    assert!(a.runtime().calls.lock().unwrap().is_empty());
}

#[tokio::test]
async fn command_errors_map_to_status_codes() {
    for (e, status) in [
        (
            CommandError::UnknownModel {
                name: "x".into(),
                available: "m".into(),
            },
            404,
        ),
        (CommandError::UnknownAdapter("no".into()), 404),
        (CommandError::Conflict("in use".into()), 409),
        (CommandError::Invalid("bad".into()), 400),
        (CommandError::Engine("down".into()), 502),
        (CommandError::ShuttingDown, 503),
    ] {
        let a = admin(Some(e.clone()));
        let r = a.handle("POST", "/admin/reload", Some(KEY), b"").await;
        assert_eq!(r.status, status, "{e:?}");
        assert_eq!(r.body.unwrap()["error"]["code"], status);
    }
}

#[tokio::test]
async fn the_model_list_has_state_adapters_and_load_mode() {
    let r = admin(None)
        .handle("GET", "/admin/models", Some(KEY), b"")
        .await;
    let m = &r.body.unwrap()["models"][0];
    assert_eq!(m["name"], "m");
    assert_eq!(m["state"], "starting");
    assert_eq!(m["load"], "always");
    assert_eq!(m["in_flight"], 0);
    assert!(m["adapters"].as_array().unwrap().is_empty());
}
