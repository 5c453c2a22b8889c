//! Every endpoint's input, random and mutated, against an in-process lockd on `memory://`:
//! bad input is always answered with a 4xx in the error envelope, never a 5xx, never a dropped
//! connection (a handler panic), and never changes a lock someone holds.
//!
//! The test holds a few locks first, then sends a few hundred generated requests (proptest:
//! a failure prints the smallest failing request and the seed to replay it; `PROPTEST_CASES`
//! raises the count), and finally checks with inspect and validate that every held lock has
//! exactly the owner, fence and expiry it had before.

use std::time::Duration;

use lockd::{Server, ServerConfig};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestRng, TestRunner};
use serde_json::{json, Map, Value};

/// Generated requests per property; proptest's `PROPTEST_CASES` overrides it.
const CASES: u32 = 300;
/// Environment variable that replays one run of the fuzzer.
const SEED_ENV: &str = "LOCKD_FUZZ_SEED";
/// The server's body limit in this test, so that some generated bodies exceed it.
const MAX_BODY: usize = 4096;

/// A lock the test holds and checks at the end.
#[derive(Debug, Clone)]
struct Held {
    object: String,
    owner: String,
    token: String,
    fence: u64,
    expires_at: String,
}

/// What the generators draw from: names and tokens that are near-misses of the held locks.
#[derive(Debug, Clone)]
struct Material {
    held: Vec<Held>,
    /// Genuine tokens of locks on other objects ("decoys"), which the test does not check.
    decoy_tokens: Vec<String>,
}

/// One generated request.
#[derive(Clone)]
enum Request {
    /// `POST path` with `content_type` (if any) and `body` bytes.
    Post {
        path: &'static str,
        content_type: Option<&'static str>,
        body: Vec<u8>,
    },
    /// `GET path?query`.
    Get { path: &'static str, query: String },
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Request::Post {
                path,
                content_type,
                body,
            } => write!(
                f,
                "POST {path} (Content-Type: {content_type:?}) {}",
                String::from_utf8_lossy(body)
            ),
            Request::Get { path, query } => write!(f, "GET {path}?{query}"),
        }
    }
}

const POST_PATHS: [&str; 6] = [
    "/v1/locks/acquire",
    "/v1/locks/release",
    "/v1/locks/renew",
    "/v1/locks/downgrade",
    "/v1/locks/validate",
    "/v1/locks/inspect",
];
const KEYS: [&str; 10] = [
    "object",
    "mode",
    "objects",
    "locks",
    "owner",
    "ttl_ms",
    "wait_ms",
    "token",
    "request_id",
    "unexpected",
];

/// Modes: the two real ones, near-misses and wrong types.
fn mode() -> BoxedStrategy<Value> {
    prop_oneof![
        3 => Just(json!("shared")),
        2 => Just(json!("exclusive")),
        1 => Just(json!("Shared")),
        1 => Just(json!("read")),
        1 => Just(json!("")),
        1 => any_json(),
    ]
    .boxed()
}

/// Object names: held ones, fresh ones, and invalid ones.
fn object_name(material: &Material) -> BoxedStrategy<Value> {
    let held: Vec<Value> = material.held.iter().map(|h| json!(h.object)).collect();
    prop_oneof![
        4 => proptest::sample::select(held),
        2 => "/fuzz/[a-z0-9{}%./ ü]{1,12}".prop_map(Value::from),
        1 => Just(json!("")),
        1 => "[a-z]{0,3}[\\x00-\\x1f\\x7f][a-z]{0,3}".prop_map(Value::from),
        1 => Just(json!("x".repeat(1025))),
        1 => any::<String>().prop_map(Value::from),
    ]
    .boxed()
}

/// One of `tokens` with one character replaced, removed or inserted, or cut short.
fn mutated_token(tokens: Vec<String>) -> BoxedStrategy<Value> {
    let alphabet: Vec<char> = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
        .chars()
        .collect();
    (
        proptest::sample::select(tokens),
        any::<proptest::sample::Index>(),
        proptest::sample::select(alphabet),
        prop_oneof![4 => Just(0u8), 1 => Just(1), 1 => Just(2), 1 => Just(3)],
    )
        .prop_filter_map(
            "a mutation that changes the token",
            |(token, at, c, how)| {
                let mut chars: Vec<char> = token.chars().collect();
                let at = at.index(chars.len());
                match how {
                    0 => chars[at] = c,
                    1 => {
                        chars.remove(at);
                    }
                    2 => chars.insert(at, c),
                    _ => chars.truncate(at),
                }
                let mutated: String = chars.into_iter().collect();
                (mutated != token).then(|| json!(mutated))
            },
        )
        .boxed()
}

/// Requests aimed at one held lock with a mutated version of its own token: the closest an
/// attacker holding a token of an earlier grant, or a corrupted copy, can get. Release and
/// renew also come batched (`locks`), beside a decoy's genuine lock.
fn targeted(material: &Material) -> BoxedStrategy<Request> {
    let held = material.held.clone();
    let decoys = material.decoy_tokens.clone();
    (
        proptest::sample::select(held),
        proptest::sample::select(vec![
            "/v1/locks/release",
            "/v1/locks/renew",
            "/v1/locks/downgrade",
            "/v1/locks/validate",
        ]),
        any::<bool>(),
        proptest::sample::select(decoys),
    )
        .prop_flat_map(|(held, path, batched, decoy)| {
            mutated_token(vec![held.token.clone()]).prop_map(move |token| {
                let several = batched && (path.ends_with("/release") || path.ends_with("/renew"));
                let body = if several {
                    json!({"locks": [{"object": "/decoy/0", "token": decoy},
                                     {"object": held.object, "token": token}],
                           "ttl_ms": 60_000})
                } else {
                    json!({"object": held.object, "token": token, "ttl_ms": 60_000})
                };
                Request::Post {
                    path,
                    content_type: Some("application/json"),
                    body: body.to_string().into_bytes(),
                }
            })
        })
        .boxed()
}

/// Tokens: tampered and truncated versions of held tokens, decoys' genuine tokens, forgeries
/// and garbage. Never a held lock's genuine token.
fn token(material: &Material) -> BoxedStrategy<Value> {
    let held: Vec<String> = material.held.iter().map(|h| h.token.clone()).collect();
    let decoys = material.decoy_tokens.clone();
    let mutated = mutated_token(held);
    prop_oneof![
        5 => mutated,
        2 => proptest::sample::select(decoys).prop_map(Value::from),
        1 => "lk2\\.[A-Za-z0-9_-]{75}".prop_map(Value::from),
        1 => "lk[0-9]\\.[A-Za-z0-9_+/=-]{0,90}".prop_map(Value::from),
        1 => any::<String>().prop_map(Value::from),
    ]
    .boxed()
}

/// Numbers for `ttl_ms` and `wait_ms`: valid ones, out-of-range ones, and wrong types. Waits
/// stay short or far past the limit, so no request blocks for long.
fn number() -> BoxedStrategy<Value> {
    prop_oneof![
        Just(json!(0)),
        Just(json!(1)),
        Just(json!(5)),
        Just(json!(3_600_000)),
        Just(json!(u64::MAX)),
        Just(json!(-1)),
        Just(json!(i64::MIN)),
        Just(json!(1.5)),
        Just(json!(1e300)),
        Just(json!("1000")),
        Just(json!(null)),
        Just(json!(true)),
        Just(json!([1000])),
        (1u64..20).prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
    ]
    .boxed()
}

/// Any JSON value, a few levels deep.
fn any_json() -> BoxedStrategy<Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        ".{0,12}".prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            proptest::collection::btree_map("[a-z_]{1,8}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
    .boxed()
}

/// A JSON object with a random subset of the API's keys, each with a plausible or implausible
/// value.
fn json_body(material: &Material) -> BoxedStrategy<Value> {
    let value_for = {
        let material = material.clone();
        move |key: &str| -> BoxedStrategy<Value> {
            match key {
                "object" => prop_oneof![4 => object_name(&material), 1 => any_json()].boxed(),
                "owner" => prop_oneof![
                    3 => "[a-z]{1,8}".prop_map(Value::from),
                    1 => Just(json!("")),
                    1 => Just(json!("o".repeat(257))),
                    1 => any_json(),
                ]
                .boxed(),
                "token" => prop_oneof![4 => token(&material), 1 => any_json()].boxed(),
                "ttl_ms" | "wait_ms" => number(),
                "mode" => mode(),
                "objects" => prop_oneof![
                    4 => proptest::collection::vec(
                        (object_name(&material), proptest::option::of(mode())).prop_map(
                            |(object, mode)| match mode {
                                Some(mode) => json!({"object": object, "mode": mode}),
                                None => json!({"object": object}),
                            },
                        ),
                        0..5,
                    )
                    .prop_map(Value::from),
                    1 => Just(Value::from(
                        (0..65).map(|i| json!({"object": format!("/fuzz/many/{i}")})).collect::<Vec<_>>(),
                    )),
                    1 => any_json(),
                ]
                .boxed(),
                "locks" => prop_oneof![
                    4 => proptest::collection::vec(
                        (object_name(&material), token(&material))
                            .prop_map(|(object, token)| json!({"object": object, "token": token})),
                        0..5,
                    )
                    .prop_map(Value::from),
                    1 => any_json(),
                ]
                .boxed(),
                _ => any_json(),
            }
        }
    };
    let fields: Vec<BoxedStrategy<Option<(String, Value)>>> = KEYS
        .iter()
        .map(|&key| {
            proptest::option::weighted(0.7, value_for(key))
                .prop_map(move |v| v.map(|v| (key.to_owned(), v)))
                .boxed()
        })
        .collect();
    fields
        .prop_map(|fields| Value::Object(fields.into_iter().flatten().collect::<Map<_, _>>()))
        .boxed()
}

/// Bodies: JSON objects as above (mostly), other JSON, and bytes that are not JSON at all.
fn body(material: &Material) -> BoxedStrategy<Vec<u8>> {
    let object = json_body(material);
    prop_oneof![
        8 => object.clone().prop_map(|v| v.to_string().into_bytes()),
        1 => any_json().prop_map(|v| v.to_string().into_bytes()),
        1 => object.clone().prop_flat_map(|v| {
            let text = v.to_string().into_bytes();
            let len = text.len();
            (Just(text), 0..len.max(1)).prop_map(|(mut text, cut)| {
                text.truncate(cut);
                text
            })
        }),
        1 => proptest::collection::vec(any::<u8>(), 0..64),
        1 => (1usize..5000).prop_map(|depth| {
            let mut nested = "[".repeat(depth);
            nested.push_str(&"]".repeat(depth));
            nested.into_bytes()
        }),
        1 => object.prop_map(|mut v| {
            v["padding"] = json!("p".repeat(MAX_BODY));
            v.to_string().into_bytes()
        }),
    ]
    .boxed()
}

fn request(material: &Material) -> BoxedStrategy<Request> {
    let post = (
        proptest::sample::select(POST_PATHS.to_vec()),
        prop_oneof![
            6 => Just(Some("application/json")),
            1 => Just(Some("application/json; charset=utf-8")),
            1 => Just(Some("text/plain")),
            1 => Just(None),
        ],
        body(material),
    )
        .prop_map(|(path, content_type, body)| Request::Post {
            path,
            content_type,
            body,
        });
    let query_value = prop_oneof![
        "[a-z0-9/%{}.]{0,10}",
        Just("%00".to_owned()),
        Just("%FF%FE".to_owned()),
        Just("-1".to_owned()),
        Just("0".to_owned()),
        Just("1001".to_owned()),
        Just("99999999999999999999999".to_owned()),
        "[0-9]{1,4}",
    ];
    let get = (
        proptest::sample::select(vec!["/v1/locks", "/v1/events"]),
        proptest::collection::vec(
            (
                proptest::sample::select(vec!["prefix", "limit", "after", "junk"]),
                query_value,
            ),
            0..4,
        ),
    )
        .prop_map(|(path, pairs)| Request::Get {
            path,
            query: pairs
                .into_iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join("&"),
        });
    prop_oneof![6 => post, 2 => targeted(material), 1 => get].boxed()
}

/// Sends `request` and checks the answer: a 2xx, or a 4xx in the error envelope.
async fn send_and_check(
    http: &reqwest::Client,
    base: &str,
    material: &Material,
    request: &Request,
) -> Result<(), TestCaseError> {
    let builder = match request {
        Request::Post {
            path,
            content_type,
            body,
        } => {
            let mut builder = http.post(format!("{base}{path}")).body(body.clone());
            if let Some(content_type) = content_type {
                builder = builder.header(reqwest::header::CONTENT_TYPE, *content_type);
            }
            builder
        }
        Request::Get { path, query } => http.get(format!("{base}{path}?{query}")),
    };
    let response = builder
        .send()
        .await
        .map_err(|e| TestCaseError::fail(format!("no answer (did a handler panic?): {e}")))?;
    let status = response.status();
    let text = response
        .text()
        .await
        .map_err(|e| TestCaseError::fail(format!("answer cut off: {e}")))?;
    prop_assert!(
        !status.is_server_error(),
        "server error {status} for bad input: {text}"
    );
    prop_assert!(
        status.is_success() || status.is_client_error(),
        "unexpected status {status}: {text}"
    );
    if status.is_client_error() {
        let body: Value = serde_json::from_str(&text)
            .map_err(|e| TestCaseError::fail(format!("{status} body is not JSON ({e}): {text}")))?;
        prop_assert!(
            body["error"]["code"]
                .as_str()
                .is_some_and(|c| !c.is_empty()),
            "{status} without an error code: {text}"
        );
        prop_assert!(
            body["error"]["message"].as_str().is_some(),
            "{status} without a message: {text}"
        );
    }
    if status.is_success() {
        if let Request::Post { path, .. } = request {
            // Only a held lock's own token (never generated) may release, renew, downgrade or
            // validate it, and nobody else can be granted it: it is held exclusively. Batched
            // answers list their successes as entries without `error`.
            let answered: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
            let mut succeeded: Vec<&Value> = vec![&answered["object"]];
            for list in ["results", "locks"] {
                if let Some(entries) = answered[list].as_array() {
                    succeeded.extend(
                        entries
                            .iter()
                            .filter(|entry| entry.get("error").is_none())
                            .map(|entry| &entry["object"]),
                    );
                }
            }
            let touched = material
                .held
                .iter()
                .find(|h| succeeded.iter().any(|object| **object == h.object.as_str()));
            let needs_token = ["/release", "/renew", "/downgrade", "/validate", "/acquire"]
                .iter()
                .any(|op| path.ends_with(op));
            prop_assert!(
                !(needs_token && touched.is_some()),
                "{path} succeeded on held lock {:?} without its token: {text}",
                touched.map(|h| &h.object)
            );
        }
    }
    Ok(())
}

async fn post(http: &reqwest::Client, base: &str, path: &str, body: Value) -> (u16, Value) {
    let response = http
        .post(format!("{base}{path}"))
        .json(&body)
        .send()
        .await
        .expect("lockd answers");
    let status = response.status().as_u16();
    (status, response.json().await.expect("a JSON answer"))
}

async fn hold(http: &reqwest::Client, base: &str, object: &str, owner: &str) -> Held {
    let (status, lease) = post(
        http,
        base,
        "/v1/locks/acquire",
        json!({"object": object, "owner": owner, "ttl_ms": 3_600_000}),
    )
    .await;
    assert_eq!(status, 200, "{lease}");
    let (status, info) = post(http, base, "/v1/locks/inspect", json!({"object": object})).await;
    assert_eq!(status, 200, "{info}");
    Held {
        object: object.to_owned(),
        owner: owner.to_owned(),
        token: lease["token"].as_str().expect("token").to_owned(),
        fence: lease["fence"].as_u64().expect("fence"),
        expires_at: info["expires_at"].as_str().expect("expires_at").to_owned(),
    }
}

/// Asserts that `held` is exactly as it was granted: same owner, fence and expiry, and its
/// token still validates.
async fn assert_unchanged(http: &reqwest::Client, base: &str, held: &Held) {
    let (status, info) = post(
        http,
        base,
        "/v1/locks/inspect",
        json!({"object": held.object}),
    )
    .await;
    assert_eq!(status, 200, "{} is no longer held: {info}", held.object);
    assert_eq!(info["owner"], held.owner.as_str(), "{info}");
    assert_eq!(info["fence"], held.fence, "{info}");
    assert_eq!(info["mode"], "exclusive", "{info}");
    assert_eq!(info["holders"].as_array().map(Vec::len), Some(1), "{info}");
    assert_eq!(
        info["expires_at"],
        held.expires_at.as_str(),
        "{}'s lease was renewed by a fuzzed request: {info}",
        held.object
    );
    let (status, valid) = post(
        http,
        base,
        "/v1/locks/validate",
        json!({"object": held.object, "token": held.token}),
    )
    .await;
    assert_eq!(status, 200, "{valid}");
    assert_eq!(valid["fence"], held.fence, "{valid}");
}

/// Random and mutated requests to every endpoint get a 2xx or an enveloped 4xx, never a 5xx or
/// a dropped connection, and leave every held lock exactly as it was.
#[test]
fn fuzzed_requests_get_4xx_never_5xx_and_never_change_a_held_lock() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let (base, material, http) = runtime.block_on(async {
        let mut config = ServerConfig::default();
        config.listen = ([127, 0, 0, 1], 0).into();
        config.backend = "memory://".into();
        config.max_body_bytes = MAX_BODY;
        let server = Server::bind(config).await.expect("lockd binds");
        let base = server.url();
        tokio::spawn(server.run_until(std::future::pending()));
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .expect("client");
        let mut held = Vec::new();
        for (object, owner) in [
            ("/held/a", "alice"),
            ("/held/{b}%7D", "bob"),
            ("/held/ü c", "carol"),
        ] {
            held.push(hold(&http, &base, object, owner).await);
        }
        let mut decoy_tokens = Vec::new();
        for i in 0..3 {
            let decoy = hold(&http, &base, &format!("/decoy/{i}"), "dave").await;
            decoy_tokens.push(decoy.token);
        }
        (base, Material { held, decoy_tokens }, http)
    });
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(CASES);
    let seed: u64 = match std::env::var(SEED_ENV) {
        Ok(seed) => seed.trim().parse().expect("LOCKD_FUZZ_SEED is a u64"),
        Err(_) => rand::random(),
    };
    let mut seed_bytes = [0u8; 32];
    seed_bytes[..8].copy_from_slice(&seed.to_le_bytes());
    let mut runner = TestRunner::new_with_rng(
        Config {
            cases,
            failure_persistence: None,
            ..Config::default()
        },
        TestRng::from_seed(RngAlgorithm::ChaCha, &seed_bytes),
    );
    let result = runner.run(&request(&material), |request| {
        runtime.block_on(send_and_check(&http, &base, &material, &request))
    });
    if let Err(failure) = result {
        panic!("{failure}\nreplay with {SEED_ENV}={seed}");
    }
    runtime.block_on(async {
        for held in &material.held {
            assert_unchanged(&http, &base, held).await;
        }
    });
}
