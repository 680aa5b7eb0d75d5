//! A tiny authoritative DNS server on 127.0.0.1 (UDP) for discovery tests: it answers
//! A/AAAA queries for any name with the addresses the test sets (TTL 0), or SERVFAIL
//! while told to fail. Messages are encoded with hickory-proto.

use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA};
use hickory_proto::rr::{RData, Record, RecordType};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::net::UdpSocket;

/// A running DNS server; stops when dropped.
pub struct DnsServer {
    pub addr: SocketAddr,
    answers: Arc<Mutex<Vec<IpAddr>>>,
    failing: Arc<AtomicBool>,
    /// Queries answered so far.
    pub queries: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl DnsServer {
    pub async fn start(answers: &[IpAddr]) -> Self {
        let socket = UdpSocket::bind("127.0.0.1:0")
            .await
            .expect("bind DNS socket");
        let addr = socket.local_addr().expect("DNS address");
        let answers = Arc::new(Mutex::new(answers.to_vec()));
        let failing = Arc::new(AtomicBool::new(false));
        let queries = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn(serve(
            socket,
            answers.clone(),
            failing.clone(),
            queries.clone(),
        ));
        Self {
            addr,
            answers,
            failing,
            queries,
            task,
        }
    }

    /// From now on, every name resolves to `answers`.
    pub fn set(&self, answers: &[IpAddr]) {
        *self.answers.lock().unwrap() = answers.to_vec();
    }

    /// Answer SERVFAIL (true) or the addresses again (false).
    pub fn fail(&self, failing: bool) {
        self.failing.store(failing, Ordering::SeqCst);
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(
    socket: UdpSocket,
    answers: Arc<Mutex<Vec<IpAddr>>>,
    failing: Arc<AtomicBool>,
    queries: Arc<AtomicU64>,
) {
    let mut buf = vec![0u8; 4096];
    loop {
        let Ok((len, peer)) = socket.recv_from(&mut buf).await else {
            return;
        };
        let Ok(request) = Message::from_vec(&buf[..len]) else {
            continue;
        };
        queries.fetch_add(1, Ordering::Relaxed);
        let mut response = Message::new(request.metadata.id, MessageType::Response, OpCode::Query);
        response.metadata.recursion_desired = request.metadata.recursion_desired;
        response.metadata.recursion_available = true;
        response.metadata.authoritative = true;
        for query in &request.queries {
            response.add_query(query.clone());
        }
        if failing.load(Ordering::SeqCst) {
            response.metadata.response_code = ResponseCode::ServFail;
        } else if let Some(query) = request.queries.first() {
            let addresses = answers.lock().unwrap().clone();
            for ip in addresses {
                let rdata = match (ip, query.query_type()) {
                    (IpAddr::V4(v4), RecordType::A) => RData::A(A(v4)),
                    (IpAddr::V6(v6), RecordType::AAAA) => RData::AAAA(AAAA(v6)),
                    _ => continue,
                };
                response.add_answer(Record::from_rdata(query.name().clone(), 0, rdata));
            }
        }
        if let Ok(bytes) = response.to_vec() {
            let _ = socket.send_to(&bytes, peer).await;
        }
    }
}
