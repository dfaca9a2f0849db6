//! A chat-completions server on loopback (tiny_http) for tests of the HTTP judge and of
//! evaluation against a served model.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use serde_json::{json, Value};

/// What the test server answers to one request.
pub struct Reply {
    pub status: u16,
    pub body: String,
    pub headers: Vec<(&'static str, String)>,
    pub delay: Duration,
}

impl Reply {
    /// A 200 chat completion whose message is `content`.
    pub fn completion(content: &str) -> Self {
        let body = json!({
            "id": "chatcmpl-test",
            "object": "chat.completion",
            "created": 0,
            "model": "judge-model",
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "finish_reason": "stop",
            }],
        });
        Self::raw(200, &body.to_string())
    }

    /// Any status with a literal body.
    pub fn raw(status: u16, body: &str) -> Self {
        Self {
            status,
            body: body.to_string(),
            headers: Vec::new(),
            delay: Duration::ZERO,
        }
    }

    pub fn header(mut self, name: &'static str, value: &str) -> Self {
        self.headers.push((name, value.to_string()));
        self
    }

    pub fn after(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }
}

/// One request as the server saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub authorization: Option<String>,
    pub body: Value,
}

/// A chat-completions server on `127.0.0.1`, answering with `handler(request body, request
/// number)` from several threads; it counts requests and the most it held at once.
pub struct TestServer {
    pub url: String,
    seen: Arc<Mutex<Vec<Seen>>>,
    in_flight: Arc<AtomicUsize>,
    max_in_flight: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl TestServer {
    pub fn start<F>(threads: usize, handler: F) -> Self
    where
        F: Fn(&Value, usize) -> Reply + Send + Sync + 'static,
    {
        let server = Arc::new(tiny_http::Server::http("127.0.0.1:0").unwrap());
        let port = server.server_addr().to_ip().unwrap().port();
        let handler = Arc::new(handler);
        let seen = Arc::new(Mutex::new(Vec::new()));
        let in_flight = Arc::new(AtomicUsize::new(0));
        let max_in_flight = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        for _ in 0..threads {
            let server = server.clone();
            let handler = handler.clone();
            let seen = seen.clone();
            let in_flight = in_flight.clone();
            let max_in_flight = max_in_flight.clone();
            let stop = stop.clone();
            thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    let Ok(Some(mut request)) = server.recv_timeout(Duration::from_millis(20))
                    else {
                        continue;
                    };
                    let now = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                    max_in_flight.fetch_max(now, Ordering::SeqCst);
                    let mut text = String::new();
                    let _ = request.as_reader().read_to_string(&mut text);
                    let body: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
                    let authorization = request
                        .headers()
                        .iter()
                        .find(|h| h.field.equiv("Authorization"))
                        .map(|h| h.value.to_string());
                    let number = {
                        let mut seen = seen.lock().unwrap();
                        seen.push(Seen {
                            method: request.method().to_string(),
                            path: request.url().to_string(),
                            authorization,
                            body: body.clone(),
                        });
                        seen.len() - 1
                    };
                    let reply = handler(&body, number);
                    thread::sleep(reply.delay);
                    in_flight.fetch_sub(1, Ordering::SeqCst);
                    let mut response =
                        tiny_http::Response::from_string(reply.body).with_status_code(reply.status);
                    // One request per connection: a kept-alive connection that tiny_http stops
                    // reading can leave a client waiting until its timeout.
                    response.add_header(
                        tiny_http::Header::from_bytes(&b"Connection"[..], &b"close"[..]).unwrap(),
                    );
                    for (name, value) in reply.headers {
                        response.add_header(
                            tiny_http::Header::from_bytes(name.as_bytes(), value.as_bytes())
                                .unwrap(),
                        );
                    }
                    let _ = request.respond(response);
                }
            });
        }
        Self {
            url: format!("http://127.0.0.1:{port}/v1"),
            seen,
            in_flight,
            max_in_flight,
            stop,
        }
    }

    pub fn requests(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    pub fn max_in_flight(&self) -> usize {
        self.max_in_flight.load(Ordering::SeqCst)
    }

    pub fn reset_max_in_flight(&self) {
        assert_eq!(self.in_flight.load(Ordering::SeqCst), 0);
        self.max_in_flight.store(0, Ordering::SeqCst);
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}
