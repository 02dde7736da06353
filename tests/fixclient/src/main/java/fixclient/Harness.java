package fixclient;

import java.io.BufferedReader;
import java.io.InputStream;
import java.io.InputStreamReader;
import java.math.BigDecimal;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.TreeMap;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicInteger;

import quickfix.Application;
import quickfix.DefaultMessageFactory;
import quickfix.FieldNotFound;
import quickfix.FileStoreFactory;
import quickfix.Group;
import quickfix.Message;
import quickfix.MessageStoreFactory;
import quickfix.ScreenLogFactory;
import quickfix.Session;
import quickfix.SessionID;
import quickfix.SessionSettings;
import quickfix.SocketInitiator;
import quickfix.field.MsgType;

/**
 * QuickFIX/J client driven line by line on stdin by tests/integration/test_fix_quickfixj.py.
 *
 * Commands: seclist, subscribe REQID SYM[,SYM..] DEPTH TYPES, book SYM, gap N, seqs, stats,
 * logout, quit. Answers are "OK ..." lines; session events are "EV ..." lines (LOGON, LOGOUT,
 * REJECT). Every message the gateway sends is validated by QuickFIX/J against the FIX 4.4
 * dictionary (the venue dictionary: standard FIX44.xml with RptSeq(83) in the market-data
 * messages, see docs/fix.md), so any deviation shows up as a Reject counted here.
 */
public final class Harness implements Application {
    private final Map<String, TreeMap<BigDecimal, String>> bids = new ConcurrentHashMap<>();
    private final Map<String, TreeMap<BigDecimal, String>> asks = new ConcurrentHashMap<>();
    private final Map<String, Integer> rptSeq = new ConcurrentHashMap<>();
    private final AtomicInteger rejectsReceived = new AtomicInteger();
    private final AtomicInteger rejectsSent = new AtomicInteger();
    private final AtomicInteger businessRejects = new AtomicInteger();
    private final AtomicInteger mdRejects = new AtomicInteger();
    private final AtomicInteger resendRequestsSent = new AtomicInteger();
    private final AtomicInteger possDupReceived = new AtomicInteger();
    private final AtomicInteger gapFillsReceived = new AtomicInteger();
    private final AtomicInteger snapshots = new AtomicInteger();
    private final AtomicInteger incrementals = new AtomicInteger();
    private final AtomicInteger trades = new AtomicInteger();
    private final AtomicInteger testRequestsReceived = new AtomicInteger();
    private volatile CountDownLatch secList = new CountDownLatch(1);
    private volatile String secListSymbols = "";
    private volatile SessionID sessionId;

    static void out(String line) {
        synchronized (System.out) {
            System.out.println(line);
            System.out.flush();
        }
    }

    @Override public void onCreate(SessionID id) { sessionId = id; }

    @Override public void onLogon(SessionID id) {
        Session s = Session.lookupSession(id);
        out("EV LOGON sender=" + s.getExpectedSenderNum() + " target=" + s.getExpectedTargetNum());
    }

    @Override public void onLogout(SessionID id) { out("EV LOGOUT"); }

    @Override public void toAdmin(Message m, SessionID id) {
        String t = type(m);
        if ("3".equals(t)) { rejectsSent.incrementAndGet(); out("EV REJECT_SENT " + m.toString().replace('\u0001', '|')); }
        if ("2".equals(t)) resendRequestsSent.incrementAndGet();
    }

    @Override public void fromAdmin(Message m, SessionID id) {
        String t = type(m);
        if ("3".equals(t)) { rejectsReceived.incrementAndGet(); out("EV REJECT_RECEIVED " + m.toString().replace('\u0001', '|')); }
        if ("4".equals(t)) gapFillsReceived.incrementAndGet();
        if ("1".equals(t)) testRequestsReceived.incrementAndGet();
        if ("5".equals(t)) out("EV PEER_LOGOUT_TEXT " + opt(m, 58));
    }

    @Override public void toApp(Message m, SessionID id) { }

    @Override public void fromApp(Message m, SessionID id) {
        try {
            if (m.getHeader().isSetField(43) && m.getHeader().getBoolean(43)) possDupReceived.incrementAndGet();
            switch (type(m)) {
                case "y": {
                    List<String> syms = new ArrayList<>();
                    for (Group g : m.getGroups(146)) syms.add(g.getString(55));
                    secListSymbols = String.join(",", syms);
                    secList.countDown();
                    break;
                }
                case "W": onSnapshot(m); break;
                case "X": onIncremental(m); break;
                case "Y": mdRejects.incrementAndGet(); out("EV MD_REJECT " + opt(m, 262) + " " + opt(m, 281)); break;
                case "j": businessRejects.incrementAndGet(); out("EV BUSINESS_REJECT " + opt(m, 58)); break;
                default: out("EV UNEXPECTED " + type(m));
            }
        } catch (FieldNotFound e) {
            out("EV ERROR field not found " + e.field);
        }
    }

    private void onSnapshot(Message m) throws FieldNotFound {
        String sym = m.getString(55);
        TreeMap<BigDecimal, String> b = new TreeMap<>(), a = new TreeMap<>();
        for (Group g : m.getGroups(268)) {
            char t = g.getChar(269);
            if (t == '0') b.put(new BigDecimal(g.getString(270)), g.getString(271));
            else if (t == '1') a.put(new BigDecimal(g.getString(270)), g.getString(271));
        }
        synchronized (this) {
            bids.put(sym, b);
            asks.put(sym, a);
            rptSeq.put(sym, m.getInt(83));
        }
        snapshots.incrementAndGet();
    }

    private synchronized void onIncremental(Message m) throws FieldNotFound {
        incrementals.incrementAndGet();
        // all entries of one symbol in one X share its RptSeq: decide once per message whether
        // it is new (a PossDup resend of something already applied is skipped)
        Map<String, Boolean> fresh = new HashMap<>();
        for (Group g : m.getGroups(268)) {
            char t = g.getChar(269);
            String sym = g.getString(55);
            int seq = g.getInt(83);
            if (t == '2') { trades.incrementAndGet(); continue; }
            Integer last = rptSeq.get(sym);
            if (last == null) continue;
            if (!fresh.computeIfAbsent(sym, k -> seq > last)) continue;
            if (seq > last + 1) out("EV RPTSEQ_GAP " + sym + " " + last + " " + seq);
            TreeMap<BigDecimal, String> side = t == '0' ? bids.get(sym) : asks.get(sym);
            BigDecimal px = new BigDecimal(g.getString(270));
            if (g.getChar(279) == '2') side.remove(px);
            else side.put(px, g.getString(271));
            rptSeq.put(sym, seq);
        }
    }

    static String type(Message m) {
        try { return m.getHeader().getString(MsgType.FIELD); } catch (FieldNotFound e) { return "?"; }
    }

    static String opt(Message m, int tag) {
        try { return m.isSetField(tag) ? m.getString(tag) : ""; } catch (FieldNotFound e) { return ""; }
    }

    private synchronized String book(String sym) {
        StringBuilder sb = new StringBuilder("OK BOOK ").append(sym).append(' ').append(rptSeq.getOrDefault(sym, -1)).append(" {\"bids\":[");
        TreeMap<BigDecimal, String> b = bids.getOrDefault(sym, new TreeMap<>());
        boolean first = true;
        for (Map.Entry<BigDecimal, String> e : b.descendingMap().entrySet()) {
            if (!first) sb.append(','); first = false;
            sb.append("[\"").append(e.getKey().toPlainString()).append("\",\"").append(e.getValue()).append("\"]");
        }
        sb.append("],\"asks\":[");
        first = true;
        for (Map.Entry<BigDecimal, String> e : asks.getOrDefault(sym, new TreeMap<>()).entrySet()) {
            if (!first) sb.append(','); first = false;
            sb.append("[\"").append(e.getKey().toPlainString()).append("\",\"").append(e.getValue()).append("\"]");
        }
        return sb.append("]}").toString();
    }

    private void send(Message m) throws Exception {
        if (!Session.sendToTarget(m, sessionId)) throw new IllegalStateException("not sent");
    }

    void command(String line) throws Exception {
        String[] p = line.trim().split(" ");
        switch (p[0]) {
            case "seclist": {
                secList = new CountDownLatch(1);
                Message m = new Message();
                m.getHeader().setString(35, "x");
                m.setString(320, "SL-" + System.nanoTime());
                m.setInt(559, 4);
                send(m);
                boolean ok = secList.await(10, TimeUnit.SECONDS);
                out("OK SECLIST " + (ok ? secListSymbols : "TIMEOUT"));
                break;
            }
            case "subscribe": {
                Message m = new Message();
                m.getHeader().setString(35, "V");
                m.setString(262, p[1]);
                m.setChar(263, '1');
                m.setInt(264, Integer.parseInt(p[3]));
                m.setInt(265, 1);
                String[] types = p[4].split(",");
                for (String t : types) { Group g = new Group(267, 269); g.setChar(269, t.charAt(0)); m.addGroup(g); }
                for (String s : p[2].split(",")) { Group g = new Group(146, 55); g.setString(55, s); m.addGroup(g); }
                send(m);
                out("OK SUBSCRIBED " + p[1]);
                break;
            }
            case "book": out(book(p[1])); break;
            case "gap": {
                // Forget the last N messages received: the next one looks like a gap, so QuickFIX/J
                // sends ResendRequest(2) and the gateway must resend with PossDupFlag=Y / gap-fill.
                Session s = Session.lookupSession(sessionId);
                int target = s.getExpectedTargetNum();
                s.setNextTargetMsgSeqNum(Math.max(1, target - Integer.parseInt(p[1])));
                out("OK GAP from=" + (target - Integer.parseInt(p[1])) + " was=" + target);
                break;
            }
            case "seqs": {
                Session s = Session.lookupSession(sessionId);
                out("OK SEQS sender=" + s.getExpectedSenderNum() + " target=" + s.getExpectedTargetNum() + " loggedon=" + s.isLoggedOn());
                break;
            }
            case "stats":
                out("OK STATS rejects_received=" + rejectsReceived + " rejects_sent=" + rejectsSent
                    + " business_rejects=" + businessRejects + " md_rejects=" + mdRejects
                    + " resend_requests_sent=" + resendRequestsSent + " possdup_received=" + possDupReceived
                    + " gap_fills_received=" + gapFillsReceived + " snapshots=" + snapshots
                    + " incrementals=" + incrementals + " trades=" + trades
                    + " test_requests_received=" + testRequestsReceived);
                break;
            case "logout": {
                Session.lookupSession(sessionId).logout("harness done");
                out("OK LOGOUT_SENT");
                break;
            }
            default: out("OK UNKNOWN " + p[0]);
        }
    }

    /** The gateway's dictionary: FIX44.xml plus RptSeq(83) in W (body, after the Instrument) and in
     *  X's NoMDEntries (after MDEntrySize, where FIX 5.0 SP2 has it). */
    static Path venueDictionary(Path dir) throws Exception {
        String xml;
        try (InputStream in = Harness.class.getClassLoader().getResourceAsStream("FIX44.xml")) {
            xml = new String(in.readAllBytes(), StandardCharsets.UTF_8);
        }
        int w = xml.indexOf("<message name=\"MarketDataSnapshotFullRefresh\"");
        int wAt = xml.indexOf("<field name=\"FinancialStatus\"", w);
        xml = xml.substring(0, wAt) + "<field name=\"RptSeq\" required=\"N\"/>\n      " + xml.substring(wAt);
        int x = xml.indexOf("<message name=\"MarketDataIncrementalRefresh\"");
        int xAt = xml.indexOf("<field name=\"MDEntryDate\"", xml.indexOf("<field name=\"MDEntrySize\"", x));
        xml = xml.substring(0, xAt) + "<field name=\"RptSeq\" required=\"N\"/>\n      " + xml.substring(xAt);
        Path out = dir.resolve("MDGW-FIX44.xml");
        Files.writeString(out, xml);
        return out;
    }

    public static void main(String[] args) throws Exception {
        String host = args[0];
        int port = Integer.parseInt(args[1]);
        Path work = Path.of(args[2]);
        int heartbeat = args.length > 3 ? Integer.parseInt(args[3]) : 2;
        Files.createDirectories(work);
        Path dict = venueDictionary(work);
        String cfg = String.join("\n",
            "[default]",
            "ConnectionType=initiator",
            "BeginString=FIX.4.4",
            "SenderCompID=CLIENT1",
            "TargetCompID=MDGW",
            "SocketConnectHost=" + host,
            "SocketConnectPort=" + port,
            "HeartBtInt=" + heartbeat,
            "ReconnectInterval=1",
            "FileStorePath=" + work.resolve("store"),
            "StartTime=00:00:00",
            "EndTime=00:00:00",
            "UseDataDictionary=Y",
            "DataDictionary=" + dict,
            "ValidateUserDefinedFields=Y",
            "ValidateFieldsOutOfOrder=Y",
            "ValidateFieldsHaveValues=Y",
            "ResetOnLogon=N",
            "[session]",
            "");
        SessionSettings settings = new SessionSettings(new java.io.ByteArrayInputStream(cfg.getBytes(StandardCharsets.UTF_8)));
        Harness app = new Harness();
        MessageStoreFactory store = new FileStoreFactory(settings);
        SocketInitiator initiator = new SocketInitiator(app, store, settings, new ScreenLogFactory(false, false, false, false), new DefaultMessageFactory());
        initiator.start();
        out("EV STARTED");
        BufferedReader in = new BufferedReader(new InputStreamReader(System.in, StandardCharsets.UTF_8));
        String line;
        while ((line = in.readLine()) != null) {
            if (line.trim().equals("quit")) break;
            if (line.isBlank()) continue;
            try { app.command(line); } catch (Exception e) { out("OK ERROR " + e); }
        }
        initiator.stop(true);
        out("EV STOPPED");
    }
}
