package peer;

import java.io.BufferedReader;
import java.io.InputStreamReader;
import java.nio.charset.StandardCharsets;
import java.util.List;
import java.util.concurrent.CopyOnWriteArrayList;
import java.util.concurrent.locks.LockSupport;

import quickfix.Application;
import quickfix.DefaultMessageFactory;
import quickfix.FileStoreFactory;
import quickfix.Group;
import quickfix.Log;
import quickfix.LogFactory;
import quickfix.MemoryStoreFactory;
import quickfix.Message;
import quickfix.MessageStoreFactory;
import quickfix.Session;
import quickfix.SessionID;
import quickfix.SessionSettings;
import quickfix.SocketAcceptor;

/**
 * The FIX peer of loadtests/bench_peer_fix.py: a QuickFIX/J 2.x acceptor for the sessions
 * BENCH1..N -> MDGW that sends the same MarketDataIncrementalRefresh(X) as fix_gateway (one
 * entry, 279/269/55/270/271/83, MDReqID(262) of the subscriber) to every session that sent a
 * MarketDataRequest(V).
 *
 * Args: PORT SESSIONS memory|file WORKDIR [MILLIS|MICROS]; the last is QuickFIX/J's
 * TimeStampPrecision of SendingTime(52) (default MILLIS), set as fix_gateway's
 * MD_FIX_TIMESTAMP_PRECISION in the same run. Stdin commands, one per line:
 *   "subs"            -> "OK subs N" (sessions subscribed so far)
 *   "run RATE SECS"   -> RATE updates/s for SECS s, each one X to every subscriber; "OK sent N"
 *   "quit"
 * No message log (a NullLog), no data dictionary validation: what is left is QuickFIX/J's
 * session layer, its message store and its MINA transport, the parts fix_gateway is compared to.
 */
public final class PeerAcceptor implements Application {
    private record Sub(SessionID id, String reqId) {}

    private final List<Sub> subs = new CopyOnWriteArrayList<>();

    @Override public void onCreate(SessionID id) {}
    @Override public void onLogon(SessionID id) {}
    @Override public void onLogout(SessionID id) { subs.removeIf(s -> s.id().equals(id)); }
    @Override public void toAdmin(Message m, SessionID id) {}
    @Override public void fromAdmin(Message m, SessionID id) {}
    @Override public void toApp(Message m, SessionID id) {}

    @Override public void fromApp(Message m, SessionID id) {
        try {
            if ("V".equals(m.getHeader().getString(35))) {
                subs.add(new Sub(id, m.getString(262)));
            }
        } catch (quickfix.FieldNotFound e) {
            // not a request we understand: ignored, as a benchmark peer may
        }
    }

    private long run(int rate, double secs) {
        long n = (long) (rate * secs);
        long t0 = System.nanoTime();
        long sent = 0;
        for (long i = 0; i < n; i++) {
            boolean bid = (i & 1) == 1;
            String px = (bid ? 90 + i % 9 : 101 + i % 9) + "." + String.format("%02d", i % 100);
            for (Sub s : subs) {
                Message x = new Message();
                x.getHeader().setString(35, "X");
                x.setString(262, s.reqId());
                Group g = new Group(268, 279);
                g.setString(279, "1");
                g.setString(269, bid ? "0" : "1");
                g.setString(55, "BTC-USD");
                g.setString(270, px);
                g.setString(271, Long.toString(1 + i % 5));
                g.setInt(83, (int) i + 2);
                x.addGroup(g);
                if (Session.lookupSession(s.id()).send(x)) {
                    sent++;
                }
            }
            long due = t0 + (i + 1) * 1_000_000_000L / rate;
            long wait = due - System.nanoTime();
            if (wait > 0) {
                LockSupport.parkNanos(wait);
            }
        }
        return sent;
    }

    public static void main(String[] args) throws Exception {
        int port = Integer.parseInt(args[0]);
        int sessions = Integer.parseInt(args[1]);
        boolean file = "file".equals(args[2]);
        String work = args[3];
        String precision = args.length > 4 ? args[4] : "MILLIS";
        SessionSettings settings = new SessionSettings();
        settings.setString("ConnectionType", "acceptor");
        settings.setString("SocketAcceptPort", Integer.toString(port));
        settings.setString("SocketAcceptAddress", "127.0.0.1");
        settings.setString("StartTime", "00:00:00");
        settings.setString("EndTime", "00:00:00");
        settings.setString("NonStopSession", "Y");
        settings.setString("UseDataDictionary", "N");
        settings.setString("ResetOnLogon", "Y");
        settings.setString("PersistMessages", "Y");
        settings.setString("FileStorePath", work + "/store");
        settings.setString("SocketTcpNoDelay", "Y");
        settings.setString("TimeStampPrecision", precision);
        for (int i = 1; i <= sessions; i++) {
            SessionID id = new SessionID("FIX.4.4", "MDGW", "BENCH" + i);
            settings.setString(id, "BeginString", "FIX.4.4");
            settings.setString(id, "SenderCompID", "MDGW");
            settings.setString(id, "TargetCompID", "BENCH" + i);
        }
        MessageStoreFactory store = file ? new FileStoreFactory(settings) : new MemoryStoreFactory();
        LogFactory nolog = id -> new Log() {
            @Override public void clear() {}
            @Override public void onIncoming(String message) {}
            @Override public void onOutgoing(String message) {}
            @Override public void onEvent(String text) {}
            @Override public void onErrorEvent(String text) {}
        };
        PeerAcceptor app = new PeerAcceptor();
        SocketAcceptor acceptor = new SocketAcceptor(app, store, settings, nolog, new DefaultMessageFactory());
        acceptor.start();
        System.out.println("READY");
        System.out.flush();
        BufferedReader in = new BufferedReader(new InputStreamReader(System.in, StandardCharsets.UTF_8));
        String line;
        while ((line = in.readLine()) != null) {
            String[] p = line.trim().split("\\s+");
            if (p[0].equals("subs")) {
                System.out.println("OK subs " + app.subs.size());
            } else if (p[0].equals("run")) {
                long sent = app.run(Integer.parseInt(p[1]), Double.parseDouble(p[2]));
                System.out.println("OK sent " + sent);
            } else if (p[0].equals("quit")) {
                break;
            }
            System.out.flush();
        }
        acceptor.stop(true);
        System.exit(0);
    }
}
