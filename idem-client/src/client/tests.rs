//! The retry loop in paused time: scripted answers, one per attempt.
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use super::*;

/// An answer; a 409 is the server's "in progress" problem.
fn answer(status: u16, retry_after: Option<&str>) -> Sent {
    let mut headers = HeaderMap::new();
    if let Some(r) = retry_after {
        headers.insert(
            http::header::RETRY_AFTER,
            HeaderValue::from_str(r).expect("value"),
        );
    }
    let body = if status == 409 {
        headers.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        Bytes::from_static(br#"{"type":"urn:idem:problem:idempotency-key-in-use","status":409}"#)
    } else {
        Bytes::from_static(b"{}")
    };
    Sent::Answer {
        status: StatusCode::from_u16(status).expect("status"),
        headers,
        body,
    }
}

/// Plays `script` one answer per attempt, recording when each came.
async fn play(policy: RetryPolicy, script: Vec<Sent>) -> (Result<Answer, Error>, Vec<Duration>) {
    let start = Instant::now();
    let script = Arc::new(Mutex::new(VecDeque::from(script)));
    let times = Arc::new(Mutex::new(Vec::new()));
    let (s, t) = (script.clone(), times.clone());
    let hook = |e: &RetryEvent| {
        assert_eq!(e.key, "key-0000000001");
    };
    let result = run(
        &policy,
        "key-0000000001".into(),
        Some(&hook),
        move |_timeout| {
            t.lock().expect("lock").push(start.elapsed());
            let next = s
                .lock()
                .expect("lock")
                .pop_front()
                .unwrap_or_else(|| answer(503, None));
            async move { next }
        },
    )
    .await;
    let times = times.lock().expect("lock").clone();
    (result, times)
}

#[tokio::test(start_paused = true)]
async fn retry_after_is_honoured_to_the_millisecond() {
    let (result, times) = play(
        RetryPolicy::default(),
        vec![answer(409, Some("3")), answer(201, None)],
    )
    .await;
    let a = result.expect("answer");
    assert_eq!((a.status.as_u16(), a.attempts), (201, 2));
    assert_eq!(times, [Duration::ZERO, Duration::from_secs(3)]);
}

#[tokio::test(start_paused = true)]
async fn no_retry_on_other_4xx_and_typed_refusals() {
    let (result, times) = play(RetryPolicy::default(), vec![answer(400, None)]).await;
    assert_eq!(result.expect("a 400 is an answer").status, 400);
    assert_eq!(times.len(), 1);
    let mut headers = HeaderMap::new();
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    let reused = Sent::Answer {
        status: StatusCode::UNPROCESSABLE_ENTITY,
        headers,
        body: Bytes::from_static(br#"{"type":"urn:idem:problem:idempotency-key-reused","title":"t","status":422,"detail":"use a new key"}"#),
    };
    let (result, times) = play(RetryPolicy::default(), vec![reused]).await;
    assert!(
        matches!(result, Err(Error::KeyReused { ref detail, .. }) if detail == "use a new key"),
        "{result:?}"
    );
    assert_eq!(times.len(), 1);
}

#[tokio::test(start_paused = true)]
async fn attempts_are_bounded_and_backoff_grows_with_full_jitter() {
    let policy = RetryPolicy {
        max_attempts: 4,
        ..RetryPolicy::default()
    };
    let (result, times) = play(policy, vec![]).await;
    // Giving up keeps what a later retry needs: the key, and the last answer.
    match &result {
        Err(Error::GaveUp {
            key,
            attempts: 4,
            last: LastAttempt::Answer(last),
        }) => {
            assert_eq!(key, "key-0000000001");
            assert_eq!(last.status, 503);
            assert_eq!(last.key, "key-0000000001");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(times.len(), 4);
    for (i, pair) in times.windows(2).enumerate() {
        let ceiling = policy.base_delay * (1 << i);
        assert!(
            pair[1] - pair[0] <= ceiling,
            "retry {} waited {:?} > {ceiling:?}",
            i + 1,
            pair[1] - pair[0]
        );
    }
    assert_eq!(policy.delay(1, None, 1.0), Duration::from_millis(100));
    assert_eq!(policy.delay(3, None, 0.5), Duration::from_millis(200));
    assert_eq!(policy.delay(30, None, 1.0), policy.max_delay);
    assert_eq!(
        policy.delay(2, Some(Duration::from_secs(9)), 0.1),
        Duration::from_secs(9)
    );
}

#[tokio::test(start_paused = true)]
async fn the_deadline_bounds_the_whole_call() {
    let policy = RetryPolicy {
        max_attempts: 100,
        deadline: Duration::from_secs(2),
        ..RetryPolicy::default()
    };
    // The server keeps saying "in progress, retry in 1 s".
    let script = (0..100).map(|_| answer(409, Some("1"))).collect();
    let start = Instant::now();
    let (result, times) = play(policy, script).await;
    assert!(matches!(result, Err(Error::Deadline { .. })), "{result:?}");
    assert!(start.elapsed() <= Duration::from_secs(2));
    assert_eq!(times, [Duration::ZERO, Duration::from_secs(1)]);
}

#[tokio::test(start_paused = true)]
async fn a_business_409_is_final_and_the_hook_sees_every_retry() {
    let mut headers = HeaderMap::new();
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    let business = Sent::Answer {
        status: StatusCode::CONFLICT,
        headers,
        body: Bytes::from_static(br#"{"error":"already shipped"}"#),
    };
    let (result, times) = play(RetryPolicy::default(), vec![business]).await;
    assert_eq!(result.expect("an answer").status, 409);
    assert_eq!(times.len(), 1);

    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    let hook = move |e: &RetryEvent| s.lock().expect("lock").push((e.attempt, e.delay));
    let script = Arc::new(Mutex::new(VecDeque::from(vec![
        answer(408, None),
        answer(409, Some("2")),
        answer(201, None),
    ])));
    let result = run(
        &RetryPolicy::default(),
        "key-0000000002".into(),
        Some(&hook),
        move |_| {
            let next = script
                .lock()
                .expect("lock")
                .pop_front()
                .unwrap_or_else(|| answer(503, None));
            async move { next }
        },
    )
    .await;
    assert_eq!(result.expect("answer").attempts, 3);
    let seen = seen.lock().expect("lock").clone();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0].0, 1);
    assert_eq!(seen[1], (2, Duration::from_secs(2)));
}
