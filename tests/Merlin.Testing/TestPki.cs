using System.Net;
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;

namespace Merlin.Testing;

/// <summary>
/// A CA and its certificates, made at test time and written as PEM into a temp dir (no key is ever
/// committed). ECDSA P-256 keeps generation fast.
/// </summary>
public sealed class TestPki : IDisposable
{
    private static readonly Oid ServerAuthentication = new("1.3.6.1.5.5.7.3.1");
    private static readonly Oid ClientAuthentication = new("1.3.6.1.5.5.7.3.2");
    private readonly TempDir _dir;

    public TestPki(string name = "Merlin Test CA")
    {
        _dir = new TempDir("pki");
        Ca = CreateCa(name);
        CaFile = Write("ca.crt", Ca.ExportCertificatePem());
    }

    public X509Certificate2 Ca { get; }

    public string CaFile { get; }

    public static X509Certificate2 CreateCa(string name)
    {
        using var key = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        var request = new CertificateRequest($"CN={name}", key, HashAlgorithmName.SHA256);
        request.CertificateExtensions.Add(new X509BasicConstraintsExtension(true, false, 0, true));
        request.CertificateExtensions.Add(new X509KeyUsageExtension(X509KeyUsageFlags.KeyCertSign | X509KeyUsageFlags.CrlSign, true));
        request.CertificateExtensions.Add(new X509SubjectKeyIdentifierExtension(request.PublicKey, false));
        return request.CreateSelfSigned(DateTimeOffset.UtcNow.AddDays(-365), DateTimeOffset.UtcNow.AddDays(365));
    }

    /// <summary>The daemon's certificate: 127.0.0.1, localhost and <paramref name="addresses"/>, for server authentication.</summary>
    public X509Certificate2 Server(params IPAddress[] addresses) =>
        Issue("merlin", uris: [], addresses: [IPAddress.Loopback, IPAddress.IPv6Loopback, .. addresses], dns: ["localhost"], usage: ServerAuthentication);

    /// <summary>A client certificate with the role URI SAN merlin:role:&lt;role&gt; (none when null) and IP SANs.</summary>
    public X509Certificate2 Client(string name, string? role, params IPAddress[] addresses) =>
        Issue(name, role is null ? [] : [$"merlin:role:{role}"], addresses);

    public X509Certificate2 Issue(
        string name, string[] uris, IPAddress[] addresses, string[]? dns = null, Oid? usage = null,
        DateTimeOffset? notBefore = null, DateTimeOffset? notAfter = null)
    {
        using var key = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        var request = new CertificateRequest($"CN={name}", key, HashAlgorithmName.SHA256);
        request.CertificateExtensions.Add(new X509BasicConstraintsExtension(false, false, 0, false));
        request.CertificateExtensions.Add(new X509KeyUsageExtension(X509KeyUsageFlags.DigitalSignature, true));
        request.CertificateExtensions.Add(new X509EnhancedKeyUsageExtension([usage ?? ClientAuthentication], false));
        var san = new SubjectAlternativeNameBuilder();
        foreach (var uri in uris) san.AddUri(new Uri(uri));
        foreach (var address in addresses) san.AddIpAddress(address);
        foreach (var name2 in dns ?? []) san.AddDnsName(name2);
        if (uris.Length + addresses.Length + (dns?.Length ?? 0) > 0) request.CertificateExtensions.Add(san.Build());
        var serial = RandomNumberGenerator.GetBytes(16);
        serial[0] &= 0x7f;
        using var issued = request.Create(Ca, notBefore ?? DateTimeOffset.UtcNow.AddDays(-1), notAfter ?? DateTimeOffset.UtcNow.AddDays(30), serial);
        return issued.CopyWithPrivateKey(key);
    }

    /// <summary>Writes a certificate and its key; returns the two paths.</summary>
    public (string Cert, string Key) WritePem(X509Certificate2 certificate, string name)
    {
        using var key = certificate.GetECDsaPrivateKey()!;
        return (Write($"{name}.crt", certificate.ExportCertificatePem()), Write($"{name}.key", key.ExportPkcs8PrivateKeyPem()));
    }

    public string Write(string name, string text)
    {
        var path = _dir.File(name);
        File.WriteAllText(path, text);
        return path;
    }

    public void Dispose() => _dir.Dispose();
}
