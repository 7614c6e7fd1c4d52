//! [`Heartbeat`]: proves, every `heartbeat_interval_secs`, that the collector still answers.
//!
//! One Heartbeat lives per incarnation. It sends `Heartbeat{seq}` through the ChildProcess,
//! receives the acks (routed by the Supervisor), measures the round trip, and when nothing has
//! been acknowledged for `heartbeat_timeout_secs` (counted from the last ack, or from the
//! spawn if none came yet) tells the Supervisor once, which kills the child. The deadline is
//! checked every [`check_period`], so the kill lands at most that late.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use actix::prelude::*;

use crate::ipc::ToCollector;
use crate::supervisor::child_process::SendToChild;

/// An ack arrived from the child.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct Ack {
    pub seq: u64,
    pub received: Instant,
}

/// What the Heartbeat reports to the Supervisor after each ack.
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "()")]
pub struct HeartbeatObserved {
    pub incarnation: u64,
    pub seq: u64,
    pub rtt: Duration,
    pub at: Instant,
}

/// No ack for `heartbeat_timeout_secs`.
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "()")]
pub struct ChildUnresponsive {
    pub incarnation: u64,
    pub silent_for: Duration,
}

/// Stop heartbeating (the incarnation is over).
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct StopHeartbeat;

/// How often the deadline is checked.
pub fn check_period(interval: Duration, timeout: Duration) -> Duration {
    (timeout / 20).clamp(Duration::from_millis(20), Duration::from_millis(250)).min(interval)
}

pub struct Heartbeat {
    incarnation: u64,
    interval: Duration,
    timeout: Duration,
    child: Recipient<SendToChild>,
    observed: Recipient<HeartbeatObserved>,
    unresponsive: Recipient<ChildUnresponsive>,
    next_seq: u64,
    /// Heartbeats in flight, oldest first (bounded: old ones are forgotten).
    in_flight: VecDeque<(u64, Instant)>,
    last_ack: Instant,
    fired: bool,
}

impl Heartbeat {
    pub fn new(
        incarnation: u64,
        interval: Duration,
        timeout: Duration,
        child: Recipient<SendToChild>,
        observed: Recipient<HeartbeatObserved>,
        unresponsive: Recipient<ChildUnresponsive>,
    ) -> Self {
        Self {
            incarnation,
            interval,
            timeout,
            child,
            observed,
            unresponsive,
            next_seq: 1,
            in_flight: VecDeque::new(),
            last_ack: Instant::now(),
            fired: false,
        }
    }

    fn beat(&mut self) {
        let seq = self.next_seq;
        self.next_seq += 1;
        if self.in_flight.len() >= 64 {
            self.in_flight.pop_front();
        }
        self.in_flight.push_back((seq, Instant::now()));
        self.child.do_send(SendToChild(ToCollector::Heartbeat { seq }));
    }

    fn check(&mut self, ctx: &mut Context<Self>) {
        let silent_for = self.last_ack.elapsed();
        if !self.fired && silent_for >= self.timeout {
            self.fired = true;
            self.unresponsive.do_send(ChildUnresponsive { incarnation: self.incarnation, silent_for });
            ctx.stop();
        }
    }
}

impl Actor for Heartbeat {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.last_ack = Instant::now();
        self.beat();
        ctx.run_interval(self.interval, |this, _| this.beat());
        ctx.run_interval(check_period(self.interval, self.timeout), |this, ctx| this.check(ctx));
    }
}

impl Handler<Ack> for Heartbeat {
    type Result = ();

    fn handle(&mut self, ack: Ack, _: &mut Context<Self>) {
        let Some(i) = self.in_flight.iter().position(|&(s, _)| s == ack.seq) else {
            tracing::debug!(seq = ack.seq, "Ack for an unknown heartbeat; ignored.");
            return;
        };
        let (_, sent) = self.in_flight[i];
        self.in_flight.drain(..=i);
        self.last_ack = ack.received;
        self.observed.do_send(HeartbeatObserved {
            incarnation: self.incarnation,
            seq: ack.seq,
            rtt: ack.received.saturating_duration_since(sent),
            at: ack.received,
        });
    }
}

impl Handler<StopHeartbeat> for Heartbeat {
    type Result = ();

    fn handle(&mut self, _: StopHeartbeat, ctx: &mut Context<Self>) {
        ctx.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_period_is_short_enough_for_the_timeout_bound() {
        let p = check_period(Duration::from_secs(5), Duration::from_secs(30));
        assert_eq!(p, Duration::from_millis(250));
        let p = check_period(Duration::from_millis(100), Duration::from_secs(1));
        assert_eq!(p, Duration::from_millis(50));
    }

    #[derive(Default)]
    struct Sink {
        sent: Vec<u64>,
        unresponsive: Vec<ChildUnresponsive>,
    }
    impl Actor for Sink {
        type Context = Context<Self>;
    }
    impl Handler<SendToChild> for Sink {
        type Result = ();
        fn handle(&mut self, SendToChild(m): SendToChild, _: &mut Context<Self>) {
            if let ToCollector::Heartbeat { seq } = m {
                self.sent.push(seq);
            }
        }
    }
    impl Handler<HeartbeatObserved> for Sink {
        type Result = ();
        fn handle(&mut self, _: HeartbeatObserved, _: &mut Context<Self>) {}
    }
    impl Handler<ChildUnresponsive> for Sink {
        type Result = ();
        fn handle(&mut self, m: ChildUnresponsive, _: &mut Context<Self>) {
            self.unresponsive.push(m);
        }
    }
    #[derive(Message)]
    #[rtype(result = "(Vec<u64>, usize)")]
    struct Peek;
    impl Handler<Peek> for Sink {
        type Result = MessageResult<Peek>;
        fn handle(&mut self, _: Peek, _: &mut Context<Self>) -> Self::Result {
            MessageResult((self.sent.clone(), self.unresponsive.len()))
        }
    }

    #[actix_rt::test]
    async fn silence_is_reported_once_after_the_timeout() {
        let sink = Sink::default().start();
        let _hb = Heartbeat::new(
            1,
            Duration::from_millis(50),
            Duration::from_millis(300),
            sink.clone().recipient(),
            sink.clone().recipient(),
            sink.clone().recipient(),
        )
        .start();
        actix_rt::time::sleep(Duration::from_millis(200)).await;
        let (sent, unresponsive) = sink.send(Peek).await.unwrap();
        assert!(sent.len() >= 3, "heartbeats are sent every interval: {sent:?}");
        assert_eq!(unresponsive, 0, "not before the timeout");
        actix_rt::time::sleep(Duration::from_millis(400)).await;
        let (_, unresponsive) = sink.send(Peek).await.unwrap();
        assert_eq!(unresponsive, 1, "reported exactly once");
    }

    #[actix_rt::test]
    async fn acks_keep_it_alive() {
        let sink = Sink::default().start();
        let hb = Heartbeat::new(
            1,
            Duration::from_millis(50),
            Duration::from_millis(300),
            sink.clone().recipient(),
            sink.clone().recipient(),
            sink.clone().recipient(),
        )
        .start();
        for _ in 0..12 {
            actix_rt::time::sleep(Duration::from_millis(50)).await;
            let (sent, _) = sink.send(Peek).await.unwrap();
            hb.do_send(Ack { seq: *sent.last().unwrap(), received: Instant::now() });
        }
        let (_, unresponsive) = sink.send(Peek).await.unwrap();
        assert_eq!(unresponsive, 0);
    }
}
